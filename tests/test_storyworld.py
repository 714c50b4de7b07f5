"""saelab.storyworld: the generator's text and its per-segment / per-token ground truth.

Every check reads the labels back against the text (or the word lists) rather than against the
generator's internals, so a label that drifts from what the text says fails here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from saelab.storyworld import corpus as sw
from saelab.storyworld import words as W

L = sw.LABEL_INDEX
N_STORIES = 2000
FEMALE, MALE = 1, 2
GIRLS, BOYS = set(W.GIRL_NAMES), set(W.BOY_NAMES)


@pytest.fixture(scope="module")
def train_stories() -> list[sw.Story]:
    return sw.stories("train", N_STORIES)


def col(story: sw.Story, name: str) -> np.ndarray:
    return story.labels[:, L[name]]


def name_gender(name: str) -> int:
    assert (name in GIRLS) != (name in BOYS), f"{name!r} is not in exactly one name list"
    return FEMALE if name in GIRLS else MALE


def slot_names(story: sw.Story) -> dict[int, str]:
    """character_slot -> the one name written with that slot (asserts it is unique)."""
    names: dict[int, set[str]] = {}
    for seg, row in zip(story.segments(), story.labels, strict=True):
        if row[L["is_name"]]:
            names.setdefault(int(row[L["character_slot"]]), set()).add(seg.strip())
    assert all(len(v) == 1 for v in names.values()), names
    assert 0 not in names, "a name without a character_slot"
    return {k: v.pop() for k, v in names.items()}


# ----- determinism and splits ----------------------------------------------------------------


def test_same_seed_same_story():
    a = sw.stories("validation", 3, start=40)
    b = sw.stories("validation", 1, start=42)[0]
    assert a[2].text == b.text
    np.testing.assert_array_equal(a[2].starts, b.starts)
    np.testing.assert_array_equal(a[2].labels, b.labels)
    texts = sw.story_texts("validation", 3, start=40)
    assert texts == [s.text for s in a]
    assert len(set(texts)) == 3  # neighbouring indices are different stories


def test_story_texts_match_labelled_stories(train_stories):
    texts = sw.story_texts("train", 300)
    assert texts == [s.text for s in train_stories[:300]]


def test_splits_are_disjoint():
    split_texts = {s: set(sw.story_texts(s, 2000)) for s in sw.SPLITS}
    for s, texts in split_texts.items():
        assert len(texts) > 1900, f"{s}: too many duplicate stories ({len(texts)} distinct)"
    assert not split_texts["train"] & split_texts["validation"]
    assert not split_texts["train"] & split_texts["test"]
    assert not split_texts["validation"] & split_texts["test"]


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="valid") as exc:
        sw.story_texts("dev", 1)
    for split in sw.SPLITS:
        assert split in str(exc.value)
    with pytest.raises(ValueError, match="'dev'"):
        sw.stories("dev", 1)


def test_vocabulary_size():
    words = {w.lower() for t in sw.story_texts("train", 20_000) for w in re.findall("[A-Za-z]+", t)}
    assert len(words) >= 1500, len(words)


# ----- the label table -----------------------------------------------------------------------


def _doc_table() -> list[tuple[str, str]]:
    return re.findall(r"^\| `(\w+)` \|([^|]*)\|", sw.__doc__, flags=re.M)


def test_labels_match_docstring_table():
    table = _doc_table()
    assert len(sw.LABELS) >= 30
    names = [lab.name for lab in sw.LABELS]
    assert len(set(names)) == len(names)
    assert [n for n, _ in table] == names  # same set, same order
    assert sw.label_names() == names
    assert [L[n] for n in names] == list(range(len(names)))


def test_docstring_values_match_labels():
    by_name = {lab.name: lab for lab in sw.LABELS}
    for name, cell in _doc_table():
        lab, cell = by_name[name], cell.strip()
        if not cell:
            assert lab.binary and lab.values == ("no", "yes"), name
            continue
        if m := re.fullmatch(r"none \+ `(\w+)`", cell):
            words = [w if isinstance(w, str) else w[0] for w in getattr(W, m.group(1))]
            expected = ("none", *words)
        elif cell == "none/1..10":
            expected = ("none", *map(str, range(1, 11)))
        else:
            expected = tuple(cell.split("/"))
        assert tuple(lab.values) == expected, name


def test_label_values_in_range(train_stories):
    labels = np.concatenate([s.labels for s in train_stories])
    assert labels.shape[1] == len(sw.LABELS)
    assert labels.min() >= 0
    for lab in sw.LABELS:
        column = labels[:, L[lab.name]]
        assert column.max() < len(lab.values), lab.name
        assert column.max() > 0, f"{lab.name} is never set in {N_STORIES} stories"


# ----- segments ------------------------------------------------------------------------------


def test_segments_tile_the_text(train_stories):
    for s in train_stories[:500]:
        assert s.labels.shape == (len(s.starts), len(sw.LABELS))
        assert s.starts[0] == 0 and np.all(np.diff(s.starts) > 0)
        segs = s.segments()
        assert len(segs) == len(s.starts)
        assert "".join(segs) == s.text
        assert all(seg.strip() for seg in segs), "an empty or whitespace-only segment"


def test_word_labels_match_word_lists(train_stories):
    numbers, colours, sizes = set(W.NUMBERS), set(W.COLOURS), set(W.SIZES)
    for s in train_stories[:500]:
        for seg, row in zip(s.segments(), s.labels, strict=True):
            word = seg.strip().lower()
            if row[L["is_number"]]:
                assert word in numbers and W.NUMBERS.index(word) + 1 == row[L["number_value"]]
            if row[L["is_size"]]:
                assert word in sizes, seg
            if row[L["is_colour"]]:
                assert word in colours, seg
            if row[L["is_name"]]:
                assert seg.strip() in GIRLS | BOYS, seg
            if row[L["is_punct"]]:
                assert row[L["word_class"]] == sw.WORD_CLASSES.index("punct")
                assert not any(c.isalpha() for c in seg.replace("'s", "")), seg


# ----- characters and pronouns ---------------------------------------------------------------


def _pronoun_distances(stories) -> list[int]:
    """Check every gendered pronoun; return, per pronoun, segments since its referent's name."""
    distances = []
    for s in stories:
        names = slot_names(s)
        last_name: dict[int, int] = {}
        for i, (seg, row) in enumerate(zip(s.segments(), s.labels, strict=True)):
            slot, word = int(row[L["character_slot"]]), seg.strip().lower()
            if row[L["is_name"]]:
                last_name[slot] = i
            g = row[L["pronoun_gender"]]
            if word in ("she", "her", "he", "him", "his"):
                assert g in (FEMALE, MALE), f"untagged pronoun {seg!r} in {s.text!r}"
            if g not in (FEMALE, MALE):
                continue
            assert row[L["is_pronoun"]] == 1 and row[L["is_repeat_mention"]] == 1
            assert word in (("she", "her") if g == FEMALE else ("he", "him", "his")), (seg, g)
            assert slot in last_name, f"{seg!r} refers to slot {slot} before its name appears"
            assert name_gender(names[slot]) == g, (names[slot], seg)
            distances.append(i - last_name[slot])
    return distances


def test_pronoun_agreement(train_stories):
    distances = _pronoun_distances(train_stories)
    assert len(distances) > N_STORIES  # more than one pronoun a story on average


def test_long_range_pronouns(train_stories):
    d = np.array(_pronoun_distances(train_stories))
    frac = float((d >= 20).mean())
    print(f"pronouns with referent's last name >= 20 segments back: {frac:.3f} of {len(d)}")
    assert frac >= 0.10


def test_characters_have_one_first_mention(train_stories):
    for s in train_stories[:500]:
        names = slot_names(s)
        assert sorted(names) == list(range(1, len(names) + 1))
        assert len(set(names.values())) == len(names), "two characters share a name"
        first = col(s, "is_first_mention")
        name = col(s, "is_name")
        for slot in names:
            idx = np.flatnonzero((name == 1) & (col(s, "character_slot") == slot))
            assert first[idx[0]] == 1 and not first[idx[1:]].any()
            assert col(s, "is_repeat_mention")[idx[1:]].all()


# ----- quotes --------------------------------------------------------------------------------


def test_quotes_balanced_and_labelled(train_stories):
    n_quotes = 0
    for s in train_stories:
        segs, names = s.segments(), slot_names(s)
        marks = np.flatnonzero(col(s, "is_quote_mark"))
        assert s.text.count('"') == len(marks) and len(marks) % 2 == 0
        inside = np.zeros(len(segs), dtype=bool)
        for o, c in zip(marks[::2], marks[1::2], strict=True):
            assert segs[o] == ' "' and segs[c] == '"', (segs[o], segs[c])
            inside[o + 1 : c] = True
            n_quotes += 1
            # The speaker tag comes just before (`Lily said, "`) or just after (`" she said.`).
            if col(s, "is_speech_verb")[o - 2] and segs[o - 1] == ",":
                who = o - 3
            else:
                assert col(s, "is_speech_verb")[c + 2], segs[c - 1 : c + 3]
                who = c + 1
            slot = col(s, "character_slot")[who]
            assert slot > 0, segs[who]
            speaker = col(s, "speaker_gender")[o + 1 : c]
            assert (speaker == name_gender(names[slot])).all(), (segs[who], s.text)
        np.testing.assert_array_equal(col(s, "in_quote"), inside.astype(int))
        np.testing.assert_array_equal(col(s, "speaker_gender") != 0, inside)
    assert n_quotes > N_STORIES / 2


# ----- counting ------------------------------------------------------------------------------


def test_plural_labels(train_stories):
    noun = sw.WORD_CLASSES.index("noun")
    seen = set()
    for s in train_stories:
        n, plural = col(s, "number_value"), col(s, "is_plural")
        is_noun = col(s, "word_class") == noun
        assert not plural[n <= 1].any() and not plural[~is_noun].any()
        assert plural[is_noun & (n > 1)].all()
        seen.update(n[is_noun].tolist())
    assert seen == set(range(11))


def test_there_was_were_agreement():
    pairs = [W.plural(x) for x in W.ANIMALS + W.OBJECTS + W.FOODS]
    singular, plural = {p[0] for p in pairs}, {p[1] for p in pairs}
    found = {"was": 0, "were": 0}
    pat = re.compile(r"\b[Tt]here (was|were) (\w+) (\w+)")
    for text in sw.story_texts("train", N_STORIES):
        for verb, number, noun in pat.findall(text):
            if number not in W.NUMBERS:
                continue  # "there was a kind girl"
            n = W.NUMBERS.index(number) + 1
            assert verb == ("was" if n == 1 else "were"), f"there {verb} {number} {noun}"
            assert noun in (singular if n == 1 else plural), f"{number} {noun}"
            found[verb] += 1
    assert min(found.values()) >= 20, found


# ----- objects -------------------------------------------------------------------------------


def test_object_attributes_consistent(train_stories):
    n_later = 0
    for s in train_stories:
        segs, slot = s.segments(), col(s, "object_slot")
        colour, size = col(s, "referent_colour"), col(s, "referent_size")
        assert 1 <= slot.max() <= 2
        later = False
        for k in np.unique(slot[slot > 0]):
            idx = np.flatnonzero(slot == k)
            assert len(set(colour[idx])) == 1 and len(set(size[idx])) == 1, s.text
            c, z = colour[idx[0]], size[idx[0]]
            assert c > 0 and z > 0
            # The first mention is described: "a <size> [adjective] <colour> <noun>".
            assert col(s, "is_size")[idx[0]] and segs[idx[0]].strip() == W.SIZES[z - 1]
            colour_words = idx[col(s, "is_colour")[idx] == 1]
            assert len(colour_words) >= 1
            assert {segs[i].strip() for i in colour_words} == {W.COLOURS[c - 1]}
            nouns = idx[col(s, "is_object")[idx] == 1]
            assert len({segs[i].strip() for i in nouns}) == 1  # always the same object noun
            assert col(s, "is_first_mention")[nouns[0]] == 1
            assert not col(s, "is_first_mention")[nouns[1:]].any()
            later |= len(nouns) > 1
        n_later += later
    assert n_later >= 0.5 * N_STORIES, n_later


def test_every_object_mention_is_first_or_repeat(train_stories):
    for s in train_stories:
        mention = (col(s, "is_object") == 1) & (col(s, "object_slot") > 0)
        flags = col(s, "is_first_mention") + col(s, "is_repeat_mention")
        assert (flags[mention] == 1).all(), s.text


# ----- story structure -----------------------------------------------------------------------


def test_story_ending_and_parts(train_stories):
    endings = set()
    for s in train_stories:
        segs = s.segments()
        ending = col(s, "story_ending")
        assert len(set(ending)) == 1 and ending[0] in (1, 2)
        endings.add(int(ending[0]))
        part, in_end = col(s, "story_part"), col(s, "in_ending")
        assert part[0] == 1 and part[-1] == 3 and np.all(np.diff(part) >= 0)
        assert set(part) == {1, 2, 3}
        assert not in_end[part != 3].any()
        first_end = np.flatnonzero(in_end)[0]
        assert in_end[first_end:].all()  # the closing sentences are a suffix
        closing = "".join(segs[first_end:])
        assert ("In the end" in closing) if ending[0] == 1 else ("never saw" in closing), closing
    assert endings == {1, 2}


def test_questions(train_stories):
    n_questions = 0
    for s in train_stories:
        segs = s.segments()
        stype, in_q = col(s, "sentence_type"), col(s, "in_question")
        np.testing.assert_array_equal(in_q, (stype == 2).astype(int))
        is_qmark = np.array([seg == "?" for seg in segs])
        assert (stype[is_qmark] == 2).all()
        # A run of question-type segments is one or more whole question sentences: it opens a
        # sentence or a quote, holds a '?', and ends at the closing quote (`Lily asked, "..?"`)
        # or at the '.' after a trailing tag (`"..?" she asked.`); never a '!'.
        runs = np.split(np.arange(len(segs)), np.flatnonzero(np.diff(stype == 2)) + 1)
        for run in runs:
            if stype[run[0]] != 2:
                continue
            text = "".join(segs[i] for i in run)
            assert is_qmark[run].any() and "!" not in text, text
            assert col(s, "is_sentence_start")[run[0]] or segs[run[0]] == ' "', text
            assert segs[run[-1]] in ('"', "."), text
            for i in run:
                if segs[i] == ".":
                    assert segs[i - 1].strip() in W.ASK_VERBS, text
            n_questions += is_qmark[run].sum()
    assert n_questions > N_STORIES / 4


# ----- token labels --------------------------------------------------------------------------


def test_token_labels(small_tokenizer, train_stories):
    tok = small_tokenizer
    for s in train_stories[:300]:
        enc = tok(s.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        rows = sw.token_labels(s, offsets)
        assert rows.shape == (len(ids), len(sw.LABELS))
        # Segment of each character, computed independently of token_labels.
        seg_of = np.repeat(np.arange(len(s.starts)), np.diff([*s.starts, len(s.text)]))
        hit = set()
        names = set(slot_names(s).values())
        for t, (a, b) in enumerate(offsets):
            assert b > a
            piece = s.text[a:b]
            first = a + len(piece) - len(piece.lstrip(" ")) if piece.strip() else a
            seg = seg_of[first]
            hit.add(int(seg))
            np.testing.assert_array_equal(rows[t], s.labels[seg])
            if s.labels[seg, L["is_name"]]:
                assert rows[t, L["is_name"]] == 1
                text = tok.decode([ids[t]]).strip()  # "" for a lone-space token before a name
                assert any(text in n for n in names), (text, names)
                assert text or not piece.strip()
            if rows[t, L["is_quote_mark"]]:
                assert '"' in tok.decode([ids[t]])
        assert hit == set(range(len(s.starts))), "a segment no token maps to"
