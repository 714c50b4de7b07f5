"""storyworld: a seeded generator of children's stories with per-token ground-truth labels.

TinyStories is itself synthetic; storyworld is a smaller, fully known cousin. A story introduces
one to three named characters (every later he/she/him/his/her must agree with the gender of the
character it refers to), one or two objects with a colour and a size that are referred back to
later, and runs through events that use dialogue in quotes, questions, negation, counting with
plural agreement (`there was one cat` / `there were three cats`), temporal and causal connectives,
emotions, and a happy or sad ending.

Text is emitted in segments (a word with its leading space, a punctuation mark, a quote mark)
together with their labels, and `token_labels` maps them onto tokens through the tokenizer's
offsets, so every token carries ground truth. Each story comes from its own seed,
`SPLITS[split] * 10**9 + index`: splits are disjoint streams and any story can be regenerated alone.

Labels (binary unless values are listed; value 0 is always "none"/false):

| label | values | meaning |
|---|---|---|
| `is_name` | | a character's name |
| `is_pronoun` | | any pronoun (he, she, him, his, her, they, I, you, we, it) |
| `is_animal` | | an animal noun |
| `is_object` | | an object noun (toys and things) |
| `is_food` | | a food noun |
| `is_place` | | a place noun |
| `is_colour` | | a colour word |
| `is_size` | | a size word |
| `is_number` | | a number word (one..ten) |
| `is_plural` | | a plural noun |
| `is_emotion` | | an emotion word |
| `is_verb` | | a verb (any tense) |
| `is_adverb` | | an -ly adverb |
| `is_negation` | | not, never, no |
| `is_temporal` | | a temporal connective (then, after that, when, before, ...) |
| `is_causal` | | because, so |
| `is_punct` | | punctuation other than quote marks |
| `is_quote_mark` | | an opening or closing quote mark |
| `is_speech_verb` | | said, asked, whispered, ... |
| `is_scenery` | | sun, sky, trees, rain, ... |
| `is_sentence_start` | | first word of a sentence (or of a quoted utterance) |
| `is_first_mention` | | first mention of a character or object in the story |
| `is_repeat_mention` | | a later mention of a character or object (name, pronoun or noun) |
| `in_quote` | | inside a quotation, the marks excluded |
| `in_question` | | inside a question sentence |
| `in_ending` | | inside the story's closing sentences |
| `word_class` | other/noun/verb/adj/adv/pronoun/name/det/prep/conj/punct/number | part of speech |
| `pronoun_gender` | none/female/male/plural | for 3rd-person pronouns, the referent's gender |
| `subject_gender` | none/female/male/plural | gender of the current sentence's subject |
| `speaker_gender` | none/female/male | inside a quote, the speaker's gender |
| `character_slot` | none/1/2/3 | which character a name or pronoun refers to |
| `object_slot` | none/1/2 | which object a noun (or its colour/size word) refers to |
| `referent_colour` | none + `COLOURS` | colour of the object referred to (also later mentions) |
| `referent_size` | none + `SIZES` | the size of the object referred to |
| `number_value` | none/1..10 | the count, on number words and the counted noun |
| `emotion` | none + `EMOTIONS` | the protagonist's current emotion (set when stated, persists) |
| `story_ending` | none/happy/sad | how the story will end (every token of the story) |
| `story_part` | none/beginning/middle/end | section of the story |
| `time_of_day` | none + `TIMES` | when the story is set, once stated |
| `sentence_type` | none/statement/question/exclamation | type of the current sentence |
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from saelab.storyworld import words as W

EOS = "<|endoftext|>"
SPLITS = {"train": 0, "validation": 1, "test": 2}
GENDERS = ("none", "female", "male", "plural")
WORD_CLASSES = tuple("other noun verb adj adv pronoun name det prep conj punct number".split())
EMOTION_NAMES = tuple(e[0] for e in W.EMOTIONS)


@dataclass(frozen=True)
class Label:
    name: str
    values: tuple[str, ...]  # category names, index 0 = none; ("no", "yes") for binary

    @property
    def binary(self) -> bool:
        return len(self.values) == 2


def _b(name: str) -> Label:
    return Label(name, ("no", "yes"))


def _c(name: str, values) -> Label:
    return Label(name, ("none", *values))


LABELS: tuple[Label, ...] = (
    *map(
        _b,
        "is_name is_pronoun is_animal is_object is_food is_place is_colour is_size is_number "
        "is_plural is_emotion is_verb is_adverb is_negation is_temporal is_causal is_punct "
        "is_quote_mark is_speech_verb is_scenery is_sentence_start is_first_mention "
        "is_repeat_mention in_quote in_question in_ending".split(),
    ),
    Label("word_class", WORD_CLASSES),
    Label("pronoun_gender", GENDERS),
    Label("subject_gender", GENDERS),
    Label("speaker_gender", GENDERS[:3]),
    _c("character_slot", ("1", "2", "3")),
    _c("object_slot", ("1", "2")),
    _c("referent_colour", W.COLOURS),
    _c("referent_size", W.SIZES),
    _c("number_value", [str(i) for i in range(1, 11)]),
    _c("emotion", EMOTION_NAMES),
    _c("story_ending", ("happy", "sad")),
    _c("story_part", ("beginning", "middle", "end")),
    _c("time_of_day", W.TIMES),
    _c("sentence_type", ("statement", "question", "exclamation")),
)
LABEL_INDEX = {lab.name: i for i, lab in enumerate(LABELS)}
_WC = {c: i for i, c in enumerate(WORD_CLASSES)}
_FEMALE, _MALE, _PLURAL = 1, 2, 3

# Pre-split vocabulary (singular, plural) pairs.
_ANIMALS = [W.plural(a) for a in W.ANIMALS]
_OBJECTS = [W.plural(o) for o in W.OBJECTS]
_FOODS = [W.plural(f) for f in W.FOODS]
_EMO_WORDS = [(i + 1, w, sign) for i, (_, ws, sign) in enumerate(W.EMOTIONS) for w in ws.split()]
_HAPPY_EMO = [e for e in _EMO_WORDS if e[2] > 0]
_SAD_EMO = [e for e in _EMO_WORDS if e[2] < 0]


@dataclass
class Story:
    """One generated story: `text`, segment start offsets `starts [n_seg]`, `labels [n_seg, L]`."""

    text: str
    starts: np.ndarray
    labels: np.ndarray

    def segments(self) -> list[str]:
        """The text of each labelled segment (a word with its space, a mark)."""
        ends = [*self.starts[1:], len(self.text)]
        return [self.text[a:b] for a, b in zip(self.starts, ends, strict=True)]


@dataclass
class _Char:
    name: str
    gender: int  # 1 female, 2 male
    slot: int
    mentioned: bool = False


@dataclass
class _Obj:
    sing: str
    plur: str
    colour: int  # index into COLOURS, 0-based
    size: int  # index into SIZES
    slot: int
    mentioned: bool = False


class _Writer:
    """Accumulates text segments; with `labels=True` also one label row per segment."""

    def __init__(self, rng: random.Random, labels: bool):
        self.r = rng
        self.parts: list[str] = []
        self.rows: list[list[int]] | None = [] if labels else None
        self.state = [0] * len(LABELS)  # labels that hold over a span of text
        self.cap = True  # capitalise the next word
        self.space = False  # no space before the very first word

    def set(self, **kw: int) -> None:
        for k, v in kw.items():
            self.state[LABEL_INDEX[k]] = v

    def w(self, text: str, wc: str = "other", **lab: int) -> None:
        """Emit one word (with its leading space) and its labels."""
        sentence_start = self.cap
        if text[0] in "aeiou" and self.parts and self.parts[-1] in (" a", "a", " A", "A"):
            self.parts[-1] += "n"  # "a eager boy" -> "an eager boy"
        if self.cap:
            text = text[0].upper() + text[1:]
            self.cap = False
        self.parts.append(" " + text if self.space else text)
        self.space = True
        if self.rows is not None:
            row = list(self.state)
            row[LABEL_INDEX["word_class"]] = _WC[wc]
            row[LABEL_INDEX["is_sentence_start"]] = int(sentence_start)
            for k, v in lab.items():
                row[LABEL_INDEX[k]] = v
            self.rows.append(row)

    def words(self, text: str, wc: str = "other", **lab: int) -> None:
        for t in text.split():
            self.w(t, wc, **lab)

    def p(self, mark: str) -> None:
        """Emit punctuation glued to the previous word; `.!?` end the sentence."""
        self.parts.append(mark)
        if self.rows is not None:
            row = list(self.state)
            row[LABEL_INDEX["word_class"]] = _WC["punct"]
            row[LABEL_INDEX["is_punct"]] = 1
            self.rows.append(row)
        if mark in ".!?" and not self.state[LABEL_INDEX["in_quote"]]:
            self.cap = True
            self.set(in_question=0, sentence_type=0)

    def open_quote(self, speaker_gender: int) -> None:
        self.parts.append(' "' if self.space else '"')
        self._quote_row()
        self.set(in_quote=1, speaker_gender=speaker_gender)
        self.cap, self.space = True, False

    def close_quote(self) -> None:
        self.set(in_quote=0, speaker_gender=0)
        self.parts.append('"')
        self._quote_row()
        self.space = True

    def _quote_row(self) -> None:
        if self.rows is not None:
            row = list(self.state)
            row[LABEL_INDEX["word_class"]] = _WC["punct"]
            row[LABEL_INDEX["is_quote_mark"]] = 1
            self.rows.append(row)

    def sentence(self, kind: str = "statement") -> None:
        t = {"statement": 1, "question": 2, "exclamation": 3}[kind]
        self.set(sentence_type=t, in_question=int(kind == "question"))
        self.cap = True


class _StoryGen:
    """The grammar. Each method writes one sentence (or part of one) through the writer."""

    def __init__(self, seed: int, labels: bool):
        self.r = r = random.Random(seed)
        self.out = _Writer(r, labels)
        n_chars = r.choice((1, 2, 2, 2, 3))
        names_f, names_m = r.sample(W.GIRL_NAMES, 3), r.sample(W.BOY_NAMES, 3)
        self.chars = []
        for slot in range(1, n_chars + 1):
            g = r.choice((_FEMALE, _MALE))
            self.chars.append(_Char((names_f if g == _FEMALE else names_m).pop(), g, slot))
        self.objs = [
            _Obj(*r.choice(_OBJECTS), r.randrange(len(W.COLOURS)), r.randrange(len(W.SIZES)), s)
            for s in range(1, r.choice((1, 2, 2)) + 1)
        ]
        self.happy = r.random() < 0.5
        self.focus = self.chars[0]  # whom a pronoun refers to
        self.home = r.choice(W.PLACES)  # the story's main place

    # ----- references ---------------------------------------------------------------------
    def name(self, c: _Char) -> None:
        first = not c.mentioned
        c.mentioned = True
        self.out.w(c.name, "name", is_name=1, character_slot=c.slot,
                   is_first_mention=int(first), is_repeat_mention=int(not first))  # fmt: skip

    def ref(self, c: _Char, case: str = "subj", pronoun_p: float = 0.6) -> None:
        """Name `c`, or use a pronoun when `c` is in focus. case: subj / obj / poss."""
        out = self.out
        if c is self.focus and c.mentioned and self.r.random() < pronoun_p:
            f = c.gender == _FEMALE
            word = {"subj": ("she", "he"), "obj": ("her", "him"), "poss": ("her", "his")}[case]
            out.w(word[0] if f else word[1], "pronoun", is_pronoun=1, pronoun_gender=c.gender,
                  character_slot=c.slot, is_repeat_mention=1)  # fmt: skip
        else:
            self.name(c)
            if case == "poss":
                self.out.p("'s")
        if case == "subj":
            self.focus = c
            out.set(subject_gender=c.gender)

    def subject(self) -> _Char:
        """Pick the sentence's subject: usually the focus character, sometimes another."""
        c = self.focus if self.r.random() < 0.7 else self.r.choice(self.chars)
        self.ref(c)
        return c

    def obj(self, o: _Obj, describe: bool | None = None, det: str | None = "the") -> None:
        """Mention object `o` (after `det`; None after a possessive); a first mention describes."""
        out, first = self.out, not o.mentioned
        describe = first if describe is None else describe
        lab = dict(object_slot=o.slot, referent_colour=o.colour + 1, referent_size=o.size + 1)
        if det is not None:
            out.w("a" if first else det, "det")
        if describe:
            out.w(W.SIZES[o.size], "adj", is_size=1, **lab)
            if first and self.r.random() < 0.5:
                out.w(self.r.choice(W.OBJ_ADJ), "adj", **lab)
            out.w(W.COLOURS[o.colour], "adj", is_colour=1, **lab)
        out.w(o.sing, "noun", is_object=1, is_first_mention=int(first),
              is_repeat_mention=int(not first), **lab)  # fmt: skip
        o.mentioned = True

    def known_obj(self) -> _Obj:
        """An object the story has already introduced (later mentions only refer back)."""
        return self.r.choice([o for o in self.objs if o.mentioned])

    def count(self, n: int, pair: tuple[str, str], flag: str) -> None:
        """`one cat` / `three cats`, with number labels on both words."""
        self.out.w(W.NUMBERS[n - 1], "number", is_number=1, number_value=n)
        noun = pair[0] if n == 1 else pair[1]
        self.out.w(noun, "noun", is_plural=int(n > 1), number_value=n, **{flag: 1})

    def noun(self, pair: tuple[str, str], flag: str, det: str = "a") -> None:
        self.out.w(det, "det")
        self.out.w(pair[0], "noun", **{flag: 1})

    def place(self, det: str = "the") -> None:
        self.out.w(det, "det")
        self.out.w(self.place_word, "noun", is_place=1)

    @property
    def place_word(self) -> str:
        return self.home if self.r.random() < 0.6 else self.r.choice(W.PLACES)

    # ----- sentences ----------------------------------------------------------------------
    def opening(self) -> None:
        out, r, c = self.out, self.r, self.chars[0]
        kid = "girl" if c.gender == _FEMALE else "boy"
        out.sentence()
        v = r.randrange(3)
        if v == 0:
            out.words("once upon a time", "other", is_temporal=1)
            out.p(",")
            out.words("there was a")
        elif v == 1:
            t = r.randrange(len(W.TIMES))
            out.set(time_of_day=t + 1)
            out.w("one", "other", is_temporal=1)
            out.w(W.TIMES[t], "noun", is_temporal=1)
            out.p(",")
            out.w("a", "det")
        else:
            out.words("there once lived a")
        out.w(r.choice(W.TRAITS), "adj")
        out.w(kid, "noun")
        out.w(r.choice(("named", "called")), "verb", is_verb=1)
        self.name(c)
        if v == 1:
            out.w("went", "verb", is_verb=1)
            out.w("to", "prep")
            self.place()
        out.p(".")
        out.set(subject_gender=0)

    def meet(self, c: _Char) -> None:
        out, r = self.out, self.r
        out.sentence()
        if r.random() < 0.5:
            self.ref(self.chars[0])
            out.w("had", "verb", is_verb=1)
            out.words("a friend", "noun")
            out.w("named", "verb", is_verb=1)
            self.name(c)
        else:
            focus = self.focus
            self.ref(c)
            out.w("was", "verb", is_verb=1)
            self.ref(focus, "poss")
            rel = r.choice(
                ("friend", "cousin", "neighbour", "sister" if c.gender == 1 else "brother")
            )
            out.w(rel, "noun")
            self.focus = c
        out.p(".")

    def have_object(self, o: _Obj) -> None:
        out, r = self.out, self.r
        out.sentence()
        if r.random() < 0.5:
            self.subject()
            out.w("had", "verb", is_verb=1)
            self.obj(o)
        else:
            out.words("one day", is_temporal=1)
            out.p(",")
            self.subject()
            out.w("found", "verb", is_verb=1)
            self.obj(o)
            out.w("in", "prep")
            self.place()
        out.p(".")

    def scenery(self) -> None:
        """A sentence about the world that changes nothing: it puts distance before pronouns."""
        out, r = self.out, self.r
        out.sentence()
        v = r.randrange(4)
        if v == 0:
            out.w("the", "det")
            out.w("sky", "noun", is_scenery=1)
            out.w("was", "verb", is_verb=1)
            out.w(r.choice(("blue", "gray", "pink", "orange")), "adj", is_colour=1)
            out.w("and", "conj")
            out.w("the", "det")
            out.w(r.choice(W.SCENERY), "noun", is_scenery=1)
            out.w("was", "verb", is_verb=1)
            out.w(r.choice(("warm", "cold", "bright", "quiet", "soft")), "adj")
        elif v == 1:
            out.w("it", "pronoun", is_pronoun=1)
            out.w("was", "verb", is_verb=1)
            out.w("a", "det")
            out.w(r.choice(W.WEATHER), "adj")
            out.w("day", "noun")
            out.w("in", "prep")
            self.place()
        elif v == 2:
            self.count(r.randint(2, 10), r.choice(_ANIMALS), "is_animal")
            out.w(r.choice(("sang", "played", "slept", "ran", "sat")), "verb", is_verb=1)
            out.w("near", "prep")
            out.w("the", "det")
            out.w(r.choice(W.SCENERY), "noun", is_scenery=1)
        else:
            out.w("the", "det")
            out.w(r.choice(W.SCENERY), "noun", is_scenery=1)
            out.w(r.choice(("moved", "shone", "danced", "waited", "glowed")), "verb", is_verb=1)
            out.w(r.choice(W.ADVERBS), "adv", is_adverb=1)
        out.p(".")

    def trait(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        self.subject()
        out.w("was", "verb", is_verb=1)
        if r.random() < 0.5:
            out.w(r.choice(("very", "so", "always")), "adv")
        out.w(r.choice(W.TRAITS), "adj")
        if r.random() < 0.5:
            out.w("and", "conj")
            out.w(r.choice(W.TRAITS), "adj")
        out.p(".")

    def move(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        if r.random() < 0.4:
            out.words(r.choice(W.TEMPORAL), "conj", is_temporal=1)
            out.p(",")
        self.subject()
        out.w(r.choice(W.MOVE_VERBS)[0], "verb", is_verb=1)
        if r.random() < 0.4:
            out.w(r.choice(W.ADVERBS), "adv", is_adverb=1)
        out.w("to", "prep")
        self.place()
        out.p(".")

    def handle(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        c = self.subject()
        out.w(r.choice(W.OBJ_VERBS)[0], "verb", is_verb=1)
        o = self.known_obj()
        if r.random() < 0.3:
            self.ref(c, "poss", pronoun_p=0.9)
            self.obj(o, describe=False, det=None)
        else:
            self.obj(o, describe=r.random() < 0.2)
        out.p(".")

    def count_sentence(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        n = r.choice((1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
        pair, flag = r.choice(
            ((r.choice(_ANIMALS), "is_animal"), (r.choice(_FOODS), "is_food"),
             (r.choice(_OBJECTS), "is_object"))
        )  # fmt: skip
        if r.random() < 0.5:
            out.w("there", "other")
            out.w("was" if n == 1 else "were", "verb", is_verb=1)
            self.count(n, pair, flag)
            out.w("in", "prep")
            self.place()
        else:
            self.subject()
            out.w(r.choice(("saw", "counted", "found")), "verb", is_verb=1)
            self.count(n, pair, flag)
        out.p(".")

    def feel(self, emo: tuple[int, str, int] | None = None) -> None:
        out, r = self.out, self.r
        out.sentence()
        emo = emo or r.choice(_EMO_WORDS)
        c = self.subject()
        out.w(r.choice(("felt", "was")), "verb", is_verb=1)
        if r.random() < 0.3:
            out.w("very", "adv")
        if c is self.chars[0]:
            out.set(emotion=emo[0])
        out.w(emo[1], "adj", is_emotion=1)
        if r.random() < 0.5:
            out.w("because", "conj", is_causal=1)
            o = self.known_obj()
            self.ref(c, "poss", pronoun_p=0.9)
            self.obj(o, describe=False, det=None)
            out.w("was", "verb", is_verb=1)
            out.w(
                r.choice(("lost", "broken", "gone", "dirty"))
                if emo[2] < 0
                else r.choice(("pretty", "shiny", "new", "fun")),
                "adj",
            )
        out.p(".")

    def hungry(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        c = self.subject()
        out.w("was", "verb", is_verb=1)
        out.w("hungry", "adj")
        out.p(",")
        out.w("so", "conj", is_causal=1)
        self.ref(c, pronoun_p=0.9)
        out.w(r.choice(W.EAT_VERBS)[0], "verb", is_verb=1)
        self.noun(r.choice(_FOODS), "is_food", det=r.choice(("a", "the")))
        out.p(".")

    def negation(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        c = self.subject()
        v = r.randrange(3)
        if v == 0:
            out.w("did", "verb", is_verb=1)
            out.w("not", "adv", is_negation=1)
            out.w("want", "verb", is_verb=1)
            out.w("to", "prep")
            out.w(r.choice(W.MOVE_VERBS)[1], "verb", is_verb=1)
            out.w("to", "prep")
            self.place()
        elif v == 1:
            out.w("could", "verb", is_verb=1)
            out.w("not", "adv", is_negation=1)
            out.w("find", "verb", is_verb=1)
            self.ref(c, "poss", pronoun_p=0.9)
            self.obj(self.known_obj(), describe=False, det=None)
        else:
            out.w("never", "adv", is_negation=1)
            out.w(r.choice(W.PLAY_VERBS)[0], "verb", is_verb=1)
            out.w("in", "prep")
            self.place()
        out.p(".")

    def when(self) -> None:
        out, r = self.out, self.r
        out.sentence()
        out.w(r.choice(("when", "before", "after")), "conj", is_temporal=1)
        c = self.subject()
        out.w(r.choice(W.MOVE_VERBS)[0], "verb", is_verb=1)
        out.w("to", "prep")
        self.place()
        out.p(",")
        self.ref(c, pronoun_p=0.9)
        out.w(r.choice(W.PLAY_VERBS)[0], "verb", is_verb=1)
        out.w(r.choice(W.ADVERBS), "adv", is_adverb=1)
        out.p(".")

    def dialogue(self) -> None:
        out, r = self.out, self.r
        speaker = self.focus if r.random() < 0.6 else r.choice(self.chars)
        question = r.random() < 0.35
        out.sentence("question" if question else "exclamation")
        tag_first = r.random() < 0.5
        if tag_first:
            self.ref(speaker)
            out.w(r.choice(W.ASK_VERBS if question else W.SAY_VERBS), "verb",
                  is_verb=1, is_speech_verb=1)  # fmt: skip
            out.p(",")
        out.open_quote(speaker.gender)
        self.utterance(question)
        out.close_quote()
        if not tag_first:
            out.cap = False
            self.ref(speaker, pronoun_p=0.5)
            out.w(r.choice(W.ASK_VERBS if question else W.SAY_VERBS), "verb",
                  is_verb=1, is_speech_verb=1)  # fmt: skip
            out.p(".")
        else:
            out.cap = True
            out.set(in_question=0, sentence_type=0)

    def utterance(self, question: bool) -> None:
        out, r = self.out, self.r
        o = self.known_obj()
        if question:
            v = r.randrange(4)
            if v == 3:
                out.w("can", "verb", is_verb=1)
                out.w("I", "pronoun", is_pronoun=1)
                out.w(r.choice(W.OBJ_VERBS)[1], "verb", is_verb=1)
                out.w("your", "pronoun", is_pronoun=1)
                out.w(o.sing, "noun", is_object=1, is_repeat_mention=1, object_slot=o.slot,
                      referent_colour=o.colour + 1, referent_size=o.size + 1)  # fmt: skip
            elif v == 0:
                out.w("where", "other")
                out.w("is", "verb", is_verb=1)
                out.w("my", "pronoun", is_pronoun=1)
                self.obj(o, describe=False, det=None)
            elif v == 1:
                out.w("can", "verb", is_verb=1)
                out.w("we", "pronoun", is_pronoun=1)
                out.w(r.choice(W.PLAY_VERBS)[1], "verb", is_verb=1)
                out.w("in", "prep")
                self.place()
            else:
                out.w("do", "verb", is_verb=1)
                out.w("you", "pronoun", is_pronoun=1)
                out.w("see", "verb", is_verb=1)
                out.w("the", "det")
                self.count(r.randint(2, 10), r.choice(_ANIMALS), "is_animal")
            out.p("?")
            return
        v = r.randrange(4)
        if v == 0:
            out.w("I", "pronoun", is_pronoun=1)
            out.w("like", "verb", is_verb=1)
            out.w("your", "pronoun", is_pronoun=1)
            out.w(W.COLOURS[o.colour], "adj", is_colour=1, object_slot=o.slot,
                  referent_colour=o.colour + 1, referent_size=o.size + 1)  # fmt: skip
            out.w(o.sing, "noun", is_object=1, is_repeat_mention=1, object_slot=o.slot,
                  referent_colour=o.colour + 1, referent_size=o.size + 1)  # fmt: skip
            out.p("!")
        elif v == 1:
            out.w("I", "pronoun", is_pronoun=1)
            out.w("do", "verb", is_verb=1)
            out.w("not", "adv", is_negation=1)
            out.w("want", "verb", is_verb=1)
            out.w("to", "prep")
            out.w(r.choice(W.MOVE_VERBS)[1], "verb", is_verb=1)
            out.w("home", "noun", is_place=1)
            out.p(".")
        elif v == 2:
            out.w("let", "verb", is_verb=1)
            out.w("us", "pronoun", is_pronoun=1)
            out.w(r.choice(W.PLAY_VERBS)[1], "verb", is_verb=1)
            out.w("in", "prep")
            self.place()
            out.p("!")
        else:
            out.w("I", "pronoun", is_pronoun=1)
            out.w("am", "verb", is_verb=1)
            out.w("so", "adv")
            out.w(r.choice(_EMO_WORDS)[1], "adj", is_emotion=1)
            out.p("!")
            if r.random() < 0.5:  # a second sentence inside the same quote
                out.cap = True
                out.w("you", "pronoun", is_pronoun=1)
                out.w("are", "verb", is_verb=1)
                out.w("my", "pronoun", is_pronoun=1)
                out.w("best", "adj")
                out.w("friend", "noun")
                out.p(".")

    def ending(self) -> None:
        out, r = self.out, self.r
        out.set(story_part=3, in_ending=1)
        o = self.known_obj()
        out.sentence()
        if self.happy:
            out.words("in the end", "other", is_temporal=1)
            out.p(",")
            c = self.subject()
            if len(self.chars) > 1 and r.random() < 0.6:
                out.w("and", "conj")
                self.name(r.choice([x for x in self.chars if x is not c]))
                out.set(subject_gender=_PLURAL)
            out.w("played", "verb", is_verb=1)
            out.w("with", "prep")
            self.obj(o, describe=False)
            out.words("all day")
            out.p(".")
            self.feel(r.choice(_HAPPY_EMO))
        else:
            c = self.subject()
            out.w("never", "adv", is_negation=1)
            out.w("saw", "verb", is_verb=1)
            self.ref(c, "poss", pronoun_p=0.9)
            self.obj(o, describe=False, det=None)
            out.w("again", "adv")
            out.p(".")
            self.feel(r.choice(_SAD_EMO))
        if r.random() < 0.5:
            out.sentence()
            out.words("the end", "other")
            out.p(".")

    def story(self) -> None:
        out, r = self.out, self.r
        out.set(story_ending=1 if self.happy else 2, story_part=1)
        self.opening()
        if r.random() < 0.5:
            self.scenery()
        for c in self.chars[1:]:
            self.meet(c)
        self.have_object(self.objs[0])
        out.set(story_part=2)
        middle = [self.move, self.handle, self.count_sentence, self.feel, self.hungry, self.trait,
                  self.negation, self.when, self.dialogue, self.dialogue, self.scenery]  # fmt: skip
        pending = self.objs[1:]
        for _ in range(r.randint(4, 8)):
            if pending and r.random() < 0.3:
                self.have_object(pending.pop())
            else:
                r.choice(middle)()
        for o in pending:
            self.have_object(o)
        self.ending()


def generate_story(seed: int, labels: bool = True) -> Story | str:
    """One story from `seed`: a `Story` with segment labels, or just its text if `labels=False`."""
    g = _StoryGen(seed, labels)
    g.story()
    text = "".join(g.out.parts)
    if not labels:
        return text
    lengths = np.fromiter((len(p) for p in g.out.parts), dtype=np.int64, count=len(g.out.parts))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return Story(text, starts, np.asarray(g.out.rows, dtype=np.int16))


def _seed(split: str, index: int) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown storyworld split {split!r}; valid: {sorted(SPLITS)}")
    return SPLITS[split] * 10**9 + index


def story_texts(split: str, n: int, start: int = 0) -> list[str]:
    """Texts of stories `start .. start+n-1` of `split` (fast path: no labels)."""
    return [generate_story(_seed(split, i), labels=False) for i in range(start, start + n)]


def stories(split: str, n: int, start: int = 0) -> list[Story]:
    """Stories `start .. start+n-1` of `split`, with segment labels."""
    return [generate_story(_seed(split, i)) for i in range(start, start + n)]


def token_labels(story: Story, offsets) -> np.ndarray:
    """Labels per token `[n_tok, n_labels]` from the tokenizer's char `offsets [n_tok, 2]`.

    A token takes the labels of the segment holding its first non-space character, so a word
    split into several tokens gives each of them the word's labels.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    first = offsets[:, 0].copy()
    text = story.text
    for i, (s, e) in enumerate(offsets):
        while s < e - 1 and text[s] == " ":
            s += 1
        first[i] = s
    seg = np.searchsorted(story.starts, first, side="right") - 1
    return story.labels[np.clip(seg, 0, len(story.starts) - 1)]


def label_names() -> list[str]:
    """Names of all labels, in column order of the label arrays."""
    return [lab.name for lab in LABELS]
