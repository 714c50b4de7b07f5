"""Word lists for the storyworld grammar (see `saelab.storyworld`).

Plain data: every list is a  string split once at import. Nouns carry their plural
as `singular/plural` where it is irregular; regular plurals add "s" (or "es" after s, x, ch, sh).
"""


def _split(s: str) -> list[str]:
    return s.split()


GIRL_NAMES = _split("""
Lily Mia Emma Ava Sophie Lucy Anna Ella Grace Chloe Zoe Ruby Daisy Rosie Molly Amy Lola Isla
Poppy Hannah Nora Clara Alice Maya Sara Julia Eva Ivy Luna Stella Hazel Violet Iris Jade Kate
Megan Nina Olive Paula Rita Susie Tina Wendy Holly Jenny Kitty Laura Maggie Nancy Penny Rose
Sally Tess Vera Bella Carla Dora Ellie Fiona Gina Heidi Jess Kim Lena Mira Nell Opal Pia Rena
Sadie Tara Uma Willa Yara Zara Abby Beth Cora Dana Erin Faye Gwen Hope Irene Joy June Kara Liza
Mabel Nola Petra Quinn Rhea Sienna Thea Una Wren Alma Bonnie Cleo Dot Edie Flora Greta Hattie
Ines Josie Lottie Millie Nadia Ottilie
""")

BOY_NAMES = _split("""
Tom Ben Sam Max Leo Jack Finn Noah Luke Jake Oscar Harry Oliver Charlie Theo Henry Adam Alex
Billy Dan Eli Felix George Hugo Ian Joe Kai Liam Mark Ned Owen Pete Ray Seth Toby Vince Will
Zack Arlo Bobby Carl Dean Eddie Fred Gus Hank Ike Jonah Kevin Lenny Milo Nick Ollie Paul Reed
Sid Ted Victor Wes Abel Bruno Cody Dylan Evan Frank Gabe Hector Ivan Jasper Kurt Lewis Marco
Nate Otto Percy Ronan Simon Tim Ulric Wade Xavier Yusuf Zane Angus Barney Caleb Dexter Ezra
Flynn Gideon Hamish Isaac Jude Kit Louis Miles Norris Orson Pablo Rufus Stanley Tobias Walter
Arthur Basil Cyril Dennis Elliot Frankie
""")

# (singular, plural) animal nouns.
ANIMALS = _split("""
cat dog bird fish frog duck rabbit mouse/mice horse cow pig sheep/sheep goat hen chick bear
lion tiger fox wolf/wolves owl bee ant butterfly/butterflies snail turtle puppy/puppies
kitten pony monkey elephant giraffe zebra deer/deer squirrel hedgehog badger otter seal
whale dolphin crab shark penguin parrot goose/geese swan crow robin bunny/bunnies lamb calf/calves
donkey camel panda koala kangaroo beaver raccoon mole bat worm spider ladybug dragonfly/dragonflies
""")

OBJECTS = _split("""
ball kite doll car truck train boat plane book box/boxes hat cap shoe sock coat scarf glove
cup bowl plate spoon fork jar bottle basket bag bucket shovel stick stone rock shell leaf/leaves
flower feather ribbon button bell drum whistle flute guitar piano/pianos crayon pencil pen
brush paper card letter map key lock clock watch/watches lamp candle blanket pillow bed chair
table rug mirror window door wagon bike sled swing slide tent puzzle robot teddy/teddies block
marble balloon bubble kettle pot pan broom mop bench fence ladder rope net jacket dress/dresses
boot umbrella/umbrellas towel comb crown ring necklace bracelet coin wallet purse gift present
trophy medal star rattle top spinner hoop bead sticker stamp globe
telescope magnet compass lantern flag drumstick paintbrush notebook backpack lunchbox
""")

FOODS = _split("""
apple banana cake cookie bread carrot cherry/cherries grape lemon orange pear peach/peaches
pie pizza/pizzas sandwich/sandwiches muffin cupcake donut pancake waffle berry/berries
strawberry/strawberries plum melon tomato/tomatoes potato/potatoes onion pepper bean pea nut
candy/candies lollipop cracker biscuit pretzel noodle bun egg sausage jelly
""")

PLACES = _split("""
park garden forest beach river lake pond hill mountain farm field meadow house school shop
market library zoo castle cave island village town city street road bridge playground kitchen
bedroom attic basement barn yard backyard jungle desert valley ocean harbor station museum
bakery cafe hospital church tower palace cottage cabin campsite orchard vineyard swamp
waterfall canyon stadium circus fair carnival theater gym pool hallway classroom porch
balcony greenhouse treehouse lighthouse windmill
""")

SCENERY = _split("""
sun sky moon cloud wind rain snow grass tree flowers bush path hill sea wave sand puddle
rainbow storm thunder light shadow morning breeze fog dew stars
""")

COLOURS = _split("red blue green yellow orange purple pink brown black white gray gold silver")
SIZES = _split("tiny small little big huge tall short long")
NUMBERS = _split("one two three four five six seven eight nine ten")

# (name, words that express it, mood sign: +1 happy, -1 sad)
EMOTIONS = [
    ("happy", "happy glad joyful cheerful", 1),
    ("sad", "sad unhappy gloomy upset", -1),
    ("scared", "scared afraid frightened nervous", -1),
    ("angry", "angry mad cross grumpy", -1),
    ("excited", "excited thrilled eager", 1),
    ("calm", "calm peaceful relaxed", 1),
    ("surprised", "surprised amazed astonished", 1),
    ("proud", "proud", 1),
    ("lonely", "lonely", -1),
    ("tired", "tired sleepy", -1),
]

TRAITS = _split("""
kind brave shy curious friendly funny clever gentle happy quiet silly smart polite busy
helpful careful lazy noisy cheerful honest playful bold sweet wise young old tiny jolly
cheeky bright caring calm eager fair loyal merry nice proud quick sleepy strong sunny
""")

OBJ_ADJ = _split("""
shiny soft old new round fluffy smooth bumpy heavy light pretty dirty clean wet dry warm
cold broken sparkly striped spotty fuzzy hard squishy
""")

# (past, base) intransitive motion/activity verbs: "Lily ran to the park."
MOVE_VERBS = [
    tuple(p.split("/"))
    for p in _split("""
ran/run walked/walk went/go hopped/hop skipped/skip rushed/rush hurried/hurry wandered/wander
raced/race climbed/climb marched/march strolled/stroll swam/swim rode/ride drove/drive
flew/fly crawled/crawl danced/dance jogged/jog tiptoed/tiptoe dashed/dash came/come
""")
]

# (past, base) transitive verbs on objects: "Tom kicked the ball."
OBJ_VERBS = [
    tuple(p.split("/"))
    for p in _split("""
kicked/kick threw/throw caught/catch held/hold found/find lost/lose dropped/drop carried/carry
pushed/push pulled/pull hugged/hug washed/wash fixed/fix painted/paint hid/hide shared/share
picked/pick touched/touch opened/open closed/close cleaned/clean shook/shake built/build
bought/buy sold/sell gave/give took/take brought/bring made/make wrapped/wrap moved/move
kept/keep waved/wave rolled/roll spun/spin grabbed/grab lifted/lift buried/bury counted/count
""")
]

# (past, base) verbs of play and rest: "Mia played happily."
PLAY_VERBS = [
    tuple(p.split("/"))
    for p in _split("""
played/play laughed/laugh sang/sing smiled/smile giggled/giggle jumped/jump napped/nap
rested/rest waited/wait listened/listen looked/look cried/cry shouted/shout yawned/yawn
slept/sleep read/read drew/draw cooked/cook baked/bake whistled/whistle clapped/clap
""")
]

EAT_VERBS = [tuple(p.split("/")) for p in _split("ate/eat tasted/taste shared/share munched/munch")]

SAY_VERBS = _split("said shouted whispered called cried replied laughed yelled")
ASK_VERBS = _split("asked wondered")

ADVERBS = _split("""
quickly slowly happily sadly quietly loudly gently carefully softly bravely proudly
eagerly calmly kindly sweetly boldly nicely brightly wildly silently
""")

TEMPORAL = ["Then", "After that", "Later", "Soon", "Next", "Suddenly", "At last", "The next day"]
TIMES = ["morning", "afternoon", "evening", "night"]
WEATHER = _split("sunny rainy windy snowy cloudy foggy stormy")


def plural(noun: str) -> tuple[str, str]:
    """`"box/boxes"` -> ("box", "boxes"); `"cat"` -> ("cat", "cats")."""
    if "/" in noun:
        s, p = noun.split("/")
        return s, p
    s = noun
    if s.endswith(("s", "x", "ch", "sh")):
        return s, s + "es"
    return s, s + "s"


# More of everything, so the corpus has a vocabulary of well over 1,500 words.
GIRL_NAMES += _split("""
Agnes Blair Celia Della Esme Freya Gemma Harriet Imogen Juno Kelsey Leah Marnie Noor Orla
Phoebe Rosa Saffron Tilly Ursula Viola Winnie Xena Yasmin Zelda Aria Bea Cassie Delia Elsa
Fern Gail Hallie Isabel Jolene Katie Lark Maeve Nettie Olga Priya Ramona Selma Trudy Vicky
Alba Brynn Coral Dolly Etta Flo Ginny Hilda Ida Juniper Kiki Lydia Minnie Nova Ruth
""")
BOY_NAMES += _split("""
Alfie Bert Clive Dario Emil Fergus Gordon Harvey Ivor Jamie Kenny Lyle Monty Nigel Oswald
Pip Roscoe Shane Tarek Upton Vernon Warren Yuri Zed Ahmed Brody Colin Declan Ernie Fabian
Grant Hugh Idris Jensen Keith Lionel Malcolm Neil Omar Piers Quentin Rory Silas Troy Vaughn
Wilbur Axel Benny Chester Duncan Elmer Floyd Gregor Horace Ira Jethro Kian Luca Mason Niall
""")
ANIMALS += _split("""
moose/moose goldfish/goldfish hamster gerbil ferret chipmunk lizard snake toad newt beetle
moth caterpillar cricket firefly/fireflies jellyfish/jellyfish octopus/octopuses starfish/starfish
lobster pelican flamingo peacock stork heron eagle hawk falcon pigeon sparrow woodpecker
walrus/walruses hippo rhino gorilla leopard cheetah
""")
OBJECTS += _split("""
scooter skateboard kayak canoe raft rocket helmet mask cape wand sword shield bow arrow
 harmonica trumpet violin tambourine xylophone/xylophones
teapot mug saucer tray napkin apron oven fridge sink tap hose rake spade wheelbarrow
hammer nail screw saw drill bolt wrench wheel/wheels pump gear spring
sponge soap bath toothbrush/toothbrushes crib cradle quilt sheet curtain shelf/shelves drawer
cupboard sofa stool desk envelope parcel postcard poster picture photo/photos frame vase
 locket brooch badge pin clip mitten slipper sandal sweater vest
belt pocket zipper kazoo pinwheel
""")
FOODS += _split("""
cheese/cheese soup/soup rice/rice porridge/porridge honey/honey jam/jam butter/butter milk/milk
juice/juice pudding popcorn/popcorn cereal/cereal yogurt/yogurt toast/toast salad
apricot coconut kiwi mango/mangoes fig date lime raspberry/raspberries blueberry/blueberries
""")
PLACES += _split("""
shed garage workshop studio office restaurant hotel airport port dock pier lagoon marsh
glade grove thicket clearing ridge cliff shore bay creek stream well quarry
mine ranch stable kennel aquarium planetarium gallery arcade mall bookshop toyshop
""")
TRAITS += _split("""
 chatty clumsy daring dreamy fearless fussy giggly grumpy hasty
humble jumpy lively lucky messy modest neat patient sensible sly sporty stubborn tidy timid
thoughtful trusty witty zany
""")
OBJ_ADJ += _split("""
shimmering glittery dusty rusty wooden plastic metal woolly silky crinkly
enormous dainty lumpy wobbly creaky squeaky chunky spiky velvety
""")
ADVERBS += _split("""
 merrily lazily neatly noisily patiently playfully politely
rapidly shyly sleepily smoothly swiftly tenderly warmly wearily cheerfully
""")
PLAY_VERBS += [
    tuple(p.split("/"))
    for p in _split("""
hummed/hum skated/skate swung/swing splashed/splash wiggled/wiggle
snored/snore wished/wish dreamed/dream knitted/knit sketched/sketch juggled/juggle
whispered/whisper bounced/bounce explored/explore
""")
]
