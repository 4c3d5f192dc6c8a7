"""Built-in tasks: seeded, offline-generated parallel data for ``cyformer demo`` and the tests.

An example is a pair ``(source_text, target_text)`` of whitespace-tokenized strings: tokens joined
by single spaces, no leading or trailing space, so ``VocabTokenizer(level="word")`` splits both
sides with ``str.split()``. Digit targets are spelled one character per token, so the model
writes numbers digit by digit instead of having to know a token per number:

=========  ====================================================  =======================
task       source                                                target
=========  ====================================================  =======================
copy       ``q b x b e``                                         ``q b x b e``
reverse    ``q b x b e``                                         ``e b x b q``
sort       ``q b x b e``                                         ``b b e q x``
numbers    ``three hundred and forty two thousand and seven``    ``3 4 2 0 0 7``
dates      ``the twenty first of march two thousand and four``   ``2 0 0 4 - 0 3 - 2 1``
           ``march 21st , 2004`` / ``21 mar 2004`` / ...
=========  ====================================================  =======================

Two more tasks label the source instead of translating it (``LABEL_TASKS``, for an
``Encoder`` with a head; the target is the labels, space-separated):

=========  ====================================================  =======================
task       source                                                target
=========  ====================================================  =======================
tagging    ``the old duck saw a fish near the boat .``           ``DET ADJ NOUN VERB DET
                                                                 NOUN ADP DET NOUN PUNCT``
classify   ``apple rain and pear with cake snow``                ``food``
=========  ====================================================  =======================

``Task.detokenize`` turns a token form into the text a person writes (``"2 0 0 4 - 0 3 - 2 1"``
-> ``"2004-03-21"``, ``"march 21st , 2004"`` -> ``"march 21st, 2004"``); ``Task.tokenize`` is its
inverse and also normalizes what a user types (case, hyphens, commas). Training and BLEU use the
token forms; detokenized forms are for display.

Splits are disjoint by the underlying value (a sequence, a number, a calendar date), so no source
string - and for ``dates`` no date in any of its surface forms - appears in two splits. Generation
is deterministic given ``(task, seed, sizes)`` on every machine and Python version: it uses only
``random.Random(str_seed).random()``, the one part of :mod:`random` Python promises to keep stable.
"""
from __future__ import annotations

import datetime
import operator
import os
import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Hashable, List, Mapping, Optional, Sequence, Tuple, Union

from .tokenizer import TextNormalizer, VocabTokenizer

Pair = Tuple[str, str]

__all__ = ["Task", "SymbolTask", "NumbersTask", "DatesTask", "TaggingTask", "MajorityTask", "TaskData", "TASKS",
           "LABEL_TASKS", "load_task", "read_parallel", "number_to_words"]


class _Rng:
    """Integers from ``random.Random.random()`` only.

    ``randrange``/``choice``/``shuffle`` may change between Python versions; ``random()`` under a
    given seed may not (documented guarantee), and a str seed is hashed with SHA-512, not ``hash()``.
    ``int(random() * n)`` has a bias below ``n / 2**53``, irrelevant for the sizes used here.
    """

    def __init__(self, seed: str):
        self._random = random.Random(seed).random

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)``."""
        return int(self._random() * n)

    def choice(self, seq: Sequence):
        return seq[self.below(len(seq))]


class Task:
    """A generator of ``(source_text, target_text)`` pairs.

    A subclass defines ``draw(rng) -> key`` (the underlying value: distinct keys give distinct
    sources) and ``render(key, rng) -> (source_text, target_text)`` (may pick a surface form), and
    sets ``name``, ``space`` (the number of distinct keys), ``vocabulary`` (every token any example
    can use, in a fixed order) and ``max_source_len`` / ``max_target_len`` (in tokens, without EOS).
    """

    name: str = ""
    description: str = ""
    space: int = 0
    vocabulary: Tuple[str, ...] = ()
    max_source_len: int = 0
    max_target_len: int = 0
    #: sides whose token form spells characters ("2 0 0 4 - 0 3") and detokenizes by concatenation
    char_sides: Tuple[str, ...] = ()
    #: what the target is: "translation" (a token sequence), or the labels of an encoder's head,
    #: "token_classification" (one label per source token) or "sequence_classification" (one)
    objective: str = "translation"
    #: the label names of a labelling task, in class-index order (``id2label``)
    labels: Tuple[str, ...] = ()

    def draw(self, rng: _Rng) -> Hashable:
        raise NotImplementedError

    def render(self, key: Hashable, rng: _Rng) -> Pair:
        raise NotImplementedError

    def normalizer(self, side: str = "source") -> TextNormalizer:
        """This side's normalisation as data: what ``tokenize`` / ``detokenize`` apply, and what
        the demo's tokenizer saves, so a saved model reads typed text as the task does."""
        _check_side(side)
        return TextNormalizer(split="characters" if side in self.char_sides else "whitespace")

    def tokenize(self, text: str, side: str = "source") -> str:
        """Written text -> this task's token form (single-space separated); inverse of ``detokenize``."""
        return " ".join(self.normalizer(side).tokens(text))

    def detokenize(self, text: str, side: str = "target") -> str:
        """Token form -> written text: ``"3 4 2 0 0 7"`` -> ``"342007"`` on a character side."""
        return self.normalizer(side).text(text.split())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.description}>"


def _check_side(side: str) -> None:
    if side not in ("source", "target"):
        raise ValueError(f"side must be 'source' or 'target', not {side!r}")


# -- copy / reverse / sort ------------------------------------------------------------------------
class SymbolTask(Task):
    """Sequences of single-letter symbols, ``min_len``-``max_len`` long (length uniform), mapped to
    themselves (``copy``), reversed (``reverse``) or sorted (``sort``). Key: the source sequence."""

    KINDS = ("copy", "reverse", "sort")

    def __init__(self, kind: str, symbols: Sequence[str] = "abcdefghijklmnopqrstuvwxyz",
                 min_len: int = 3, max_len: int = 12, name: Optional[str] = None):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, not {kind!r}")
        symbols = tuple(symbols)
        if not symbols or len(set(symbols)) != len(symbols) or any(not s or s.split() != [s] for s in symbols):
            raise ValueError("symbols must be distinct non-empty tokens without whitespace")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.kind, self.symbols, self.min_len, self.max_len = kind, symbols, min_len, max_len
        self.name = name or kind
        self.description = f"{kind} {min_len}-{max_len} symbols from {len(symbols)}"
        self.space = sum(len(symbols) ** n for n in range(min_len, max_len + 1))
        self.vocabulary = symbols
        self.max_source_len = self.max_target_len = max_len

    def draw(self, rng: _Rng) -> Tuple[str, ...]:
        # Length first, then symbols: uniform over sequences would make almost all of them max_len.
        n = self.min_len + rng.below(self.max_len - self.min_len + 1)
        return tuple(rng.choice(self.symbols) for _ in range(n))

    def render(self, key: Tuple[str, ...], rng: _Rng) -> Pair:
        if self.kind == "reverse":
            out = key[::-1]
        elif self.kind == "sort":
            out = tuple(sorted(key, key=self.symbols.index))   # the symbols' own order, not str order
        else:
            out = key
        return " ".join(key), " ".join(out)


# -- numbers ---------------------------------------------------------------------------------------
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_DIGITS = tuple("0123456789")


def _below_100(n: int) -> List[str]:
    if n < 20:
        return [_ONES[n]]
    tens, ones = divmod(n, 10)
    return [_TENS[tens]] + ([_ONES[ones]] if ones else [])


def _below_1000(n: int) -> List[str]:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _below_100(rest)
    return [_ONES[hundreds], "hundred"] + (["and"] + _below_100(rest) if rest else [])


def number_to_words(n: int) -> str:
    """``0 <= n < 1_000_000`` in British English words, as the ``numbers`` task writes them.

    Compound tens are two tokens ("forty two"), "and" follows "hundred" and precedes a final part
    below one hundred: 342007 -> "three hundred and forty two thousand and seven", 1100 -> "one
    thousand one hundred", 0 -> "zero". One spelling per number, so words <-> digits is a function.
    """
    n = operator.index(n)
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_to_words covers 0 <= n < 1000000, got {n}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = _below_1000(thousands) + ["thousand"] if thousands else []
    if rest >= 100 or (rest and not thousands):
        words += _below_1000(rest)
    elif rest:
        words += ["and"] + _below_100(rest)
    return " ".join(words)


class NumbersTask(Task):
    """English number words -> digits, ``0 <= n < 10**6``. Key: the number.

    Numbers are drawn by magnitude class (0-99, 3, 4, 5, 6 digits with weights 1:2:3:4:5), not
    uniformly: uniform would make 90% of them six-digit and leave "forty two" nearly unseen.
    """

    name = "numbers"
    description = "English number words -> digits, 0 to 999999"
    space = 1_000_000
    vocabulary = tuple(_ONES) + _TENS[2:] + ("hundred", "thousand", "and") + _DIGITS
    max_source_len = 11   # "seven hundred and seventy seven thousand seven hundred and seventy seven"
    max_target_len = 6
    char_sides = ("target",)
    _CLASSES = ((0, 100, 1), (100, 1000, 2), (1000, 10_000, 3), (10_000, 100_000, 4), (100_000, 1_000_000, 5))

    def draw(self, rng: _Rng) -> int:
        r = rng.below(sum(w for _, _, w in self._CLASSES))
        for lo, hi, weight in self._CLASSES:
            if r < weight:
                return lo + rng.below(hi - lo)
            r -= weight
        raise AssertionError("unreachable")

    def render(self, key: int, rng: _Rng) -> Pair:
        return number_to_words(key), " ".join(str(key))

    def normalizer(self, side: str = "source") -> TextNormalizer:
        if side == "source":   # "Forty-Two" -> "forty two"
            return TextNormalizer(lowercase=True, replace=[("-", " ")])
        return super().normalizer(side)


# -- dates -----------------------------------------------------------------------------------------
_MONTHS = ("january february march april may june july august september october november "
           "december").split()
_MONTHS_SHORT = tuple(m[:3] for m in _MONTHS)
_ORDINALS = ("",) + tuple("first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
                          "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth "
                          "nineteenth".split())
_FIRST_DAY, _LAST_DAY = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)


def _ordinal_words(day: int) -> List[str]:
    if day < 20:
        return [_ORDINALS[day]]
    tens, ones = divmod(day, 10)
    return [_TENS[tens], _ORDINALS[ones]] if ones else [_TENS[tens][:-1] + "ieth"]   # twentieth, thirtieth


def _ordinal_number(day: int) -> str:
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _year_words(year: int) -> List[str]:
    """1984 -> nineteen eighty four, 1905 -> nineteen oh five, 1900 -> nineteen hundred,
    2004 -> two thousand and four, 2000 -> two thousand, 2024 -> twenty twenty four."""
    century, rest = divmod(year, 100)
    if 2000 <= year <= 2009:
        return number_to_words(year).split()
    if rest == 0:
        return _below_100(century) + ["hundred"]
    if rest < 10:
        return _below_100(century) + ["oh", _ONES[rest]]
    return _below_100(century) + _below_100(rest)


class DatesTask(Task):
    """Dates in words, in one of seven surface forms -> ISO 8601 ``YYYY-MM-DD``, 1900-2099.

    Key: the date, so a test date never appears in training in any surface form. Day and form are
    uniform; years in digits are one source token each ("2004"), as a word-level tokenizer sees them.
    """

    name = "dates"
    description = "dates in words -> ISO 8601, 1900-01-01 to 2099-12-31"
    space = (_LAST_DAY - _FIRST_DAY).days + 1
    vocabulary = tuple(dict.fromkeys(
        ("the", "of", ",") + tuple(_MONTHS) + _MONTHS_SHORT
        + tuple(w for d in range(1, 32) for w in _ordinal_words(d))
        + tuple(w for y in range(1900, 2100) for w in _year_words(y))
        + tuple(str(d) for d in range(1, 32)) + tuple(_ordinal_number(d) for d in range(1, 32))
        + tuple(str(y) for y in range(1900, 2100)) + _DIGITS + ("-",)))
    max_source_len = 9    # "the twenty first of september two thousand and four"
    max_target_len = 10   # "2 0 0 4 - 0 3 - 2 1"
    char_sides = ("target",)

    @staticmethod
    def forms(date: datetime.date) -> List[str]:
        """Every surface form of ``date`` (token form), in the order ``render`` indexes them."""
        month, short = _MONTHS[date.month - 1], _MONTHS_SHORT[date.month - 1]
        day, nth, year = str(date.day), _ordinal_number(date.day), str(date.year)
        nth_words, year_words = " ".join(_ordinal_words(date.day)), " ".join(_year_words(date.year))
        return [f"the {nth_words} of {month} {year_words}",   # the twenty first of march two thousand and four
                f"{month} the {nth_words} , {year_words}",    # march the twenty first , two thousand and four
                f"{month} {nth} , {year}",                    # march 21st , 2004
                f"{month} {day} , {year}",                    # march 21 , 2004
                f"{day} {month} {year}",                      # 21 march 2004
                f"{day} {short} {year}",                      # 21 mar 2004
                f"{nth} of {month} {year}"]                   # 21st of march 2004

    def draw(self, rng: _Rng) -> int:
        return _FIRST_DAY.toordinal() + rng.below(self.space)

    def render(self, key: int, rng: _Rng) -> Pair:
        date = datetime.date.fromordinal(key)
        return rng.choice(self.forms(date)), " ".join(date.isoformat())

    def normalizer(self, side: str = "source") -> TextNormalizer:
        if side == "source":   # "March 21st, 2004" -> "march 21st , 2004"; "Twenty-First" -> "twenty first"
            return TextNormalizer(lowercase=True, replace=[("-", " "), (".", " "), (",", " , ")],
                                  detokenize_replace=[(" ,", ",")])
        return super().normalizer(side)


# -- labelling tasks (an encoder with a head) -------------------------------------------------------
# word -> the tags it can take; the ambiguous ones (duck: NOUN or VERB, light: ADJ, NOUN or VERB)
# are what makes the task need context: the tag depends on the word's place in the sentence.
_NOUNS = ("dog cat bird fish duck boat river house book watch light park tree child teacher farmer "
          "city garden letter song").split()
_VERBS = ("saw watch duck fish book light see find like paint follow visit open carry").split()
_ADJS = ("old small red happy quiet light big green").split()
_NAMES = ("anna ben carla david emma").split()
_PRONOUNS = ("she he they we it").split()
_DETS = ("the a this every some").split()
_PREPS = ("near under with behind over").split()
_ADVS = ("slowly today often again").split()
_CONJS = ("and but").split()


class TaggingTask(Task):
    """Part-of-speech tags of sentences from a small generated grammar, one tag per word::

        S  -> NP VP ( CONJ NP VP )? "."      NP -> DET ADJ* NOUN PP? | PRON | PROPN
        VP -> VERB NP? PP? ADV?              PP -> ADP DET ADJ? NOUN

    Several words are both nouns and verbs (``duck``, ``fish``, ``watch``, ``saw``, ``book``,
    ``light``; ``light`` is an adjective too), so a word's tag is decided by its context.
    Key: the (word, tag) sequence."""

    name = "tagging"
    description = "part-of-speech tags of generated sentences (one label per word)"
    objective = "token_classification"
    labels = ("DET", "ADJ", "NOUN", "PROPN", "PRON", "VERB", "ADP", "ADV", "CONJ", "PUNCT")
    space = 10 ** 12
    # a clause is at most NP (DET ADJ ADJ NOUN + PP of 4) + VERB + NP + PP + ADV = 22 words;
    # two clauses, CONJ and "."
    max_source_len = max_target_len = 2 * 22 + 2

    def __init__(self):
        self.vocabulary = tuple(dict.fromkeys(_DETS + _ADJS + _NOUNS + _NAMES + _PRONOUNS + _VERBS + _PREPS
                                              + _ADVS + _CONJS + ["."]))

    @staticmethod
    def _noun_phrase(rng: _Rng, out: list, object_: bool) -> None:
        kind = rng.below(10)
        if kind < 6 or object_ and kind < 8:
            out.append((rng.choice(_DETS), "DET"))
            for _ in range(rng.below(3) if rng.below(2) else 0):
                out.append((rng.choice(_ADJS), "ADJ"))
            out.append((rng.choice(_NOUNS), "NOUN"))
            if rng.below(4) == 0:
                TaggingTask._prep_phrase(rng, out)
        elif kind < 8:
            out.append((rng.choice(_PRONOUNS), "PRON"))
        else:
            out.append((rng.choice(_NAMES), "PROPN"))

    @staticmethod
    def _prep_phrase(rng: _Rng, out: list) -> None:
        out.append((rng.choice(_PREPS), "ADP"))
        out.append((rng.choice(_DETS), "DET"))
        if rng.below(3) == 0:
            out.append((rng.choice(_ADJS), "ADJ"))
        out.append((rng.choice(_NOUNS), "NOUN"))

    def _clause(self, rng: _Rng, out: list) -> None:
        self._noun_phrase(rng, out, object_=False)
        out.append((rng.choice(_VERBS), "VERB"))
        if rng.below(4):
            self._noun_phrase(rng, out, object_=True)
        if rng.below(3) == 0:
            self._prep_phrase(rng, out)
        if rng.below(4) == 0:
            out.append((rng.choice(_ADVS), "ADV"))

    def draw(self, rng: _Rng) -> Tuple[Tuple[str, str], ...]:
        out: list = []
        self._clause(rng, out)
        if rng.below(4) == 0:
            out.append((rng.choice(_CONJS), "CONJ"))
            self._clause(rng, out)
        out.append((".", "PUNCT"))
        return tuple(out)

    def render(self, key, rng: _Rng) -> Pair:
        return " ".join(w for w, _ in key), " ".join(t for _, t in key)


_TOPICS = {
    "animals": "dog cat horse cow sheep goat mouse fox".split(),
    "food": "apple bread cake pear rice soup cheese plum".split(),
    "weather": "rain snow wind fog storm sun frost hail".split(),
    "music": "song drum piano guitar violin choir flute tune".split(),
}
_FILLERS = "the and with some of a".split()


class MajorityTask(Task):
    """Which topic most of a sequence's content words belong to (a label per sequence).

    4-14 words; each is a content word of one of four topics (8 words each) or, with
    probability 1/4, a filler word (``the``, ``and``, ...) that counts for no topic. Only
    sequences with a strict majority are drawn, and about half of them win by one word, so
    the model must count, not spot one word. Key: the word sequence."""

    name = "classify"
    description = "the majority topic of a word sequence (one label per sequence)"
    objective = "sequence_classification"
    labels = tuple(_TOPICS)
    space = 10 ** 12
    max_source_len = 14
    max_target_len = 1
    min_len = 4

    def __init__(self):
        self.vocabulary = tuple(w for words in _TOPICS.values() for w in words) + tuple(_FILLERS)

    def draw(self, rng: _Rng) -> Tuple[str, ...]:
        while True:
            n = self.min_len + rng.below(self.max_source_len - self.min_len + 1)
            words = []
            for _ in range(n):
                if rng.below(4) == 0:
                    words.append(rng.choice(_FILLERS))
                else:
                    words.append(rng.choice(_TOPICS[self.labels[rng.below(len(self.labels))]]))
            if self.label(words) is not None:
                return tuple(words)

    @staticmethod
    def label(words: Sequence[str]) -> Optional[str]:
        """The topic with the most words, or None on a tie (or no content word)."""
        counts = {t: sum(w in ws for w in words) for t, ws in _TOPICS.items()}
        best = max(counts.values())
        winners = [t for t, c in counts.items() if c == best]
        return winners[0] if best and len(winners) == 1 else None

    def render(self, key, rng: _Rng) -> Pair:
        return " ".join(key), self.label(key)


#: The built-in translation tasks by name (read-only).
TASKS: Mapping[str, Task] = MappingProxyType({
    "copy": SymbolTask("copy"),
    "reverse": SymbolTask("reverse"),
    "sort": SymbolTask("sort"),
    "numbers": NumbersTask(),
    "dates": DatesTask(),
})

#: The built-in labelling tasks (for an ``Encoder`` with a head) by name (read-only).
LABEL_TASKS: Mapping[str, Task] = MappingProxyType({
    "tagging": TaggingTask(),
    "classify": MajorityTask(),
})


# -- splits ----------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """The three splits of a task: lists of ``(source_text, target_text)`` token-form pairs."""

    name: str
    train: List[Pair]
    valid: List[Pair]
    test: List[Pair]
    task: Optional[Task] = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"TaskData({self.name!r}, train={len(self.train)}, valid={len(self.valid)}, "
                f"test={len(self.test)})")

    def build_tokenizer(self) -> VocabTokenizer:
        """One word-level vocabulary for both sides: the task's full ``vocabulary`` in its fixed
        order (so ids do not depend on seed or sizes, and anything a user types in the task's
        grammar is known), then any other token of any split, most frequent first. For a
        labelling task only the source side: its targets are labels (``task.labels``), not tokens."""
        known = dict.fromkeys(self.task.vocabulary if self.task is not None else ())
        labelling = self.task is not None and self.task.objective != "translation"
        counts = {}
        for split in (self.train, self.valid, self.test):
            for pair in split:
                for text in (pair[:1] if labelling else pair):
                    for t in text.split():
                        if t not in known:
                            counts[t] = counts.get(t, 0) + 1
        extra = sorted(counts, key=lambda t: (-counts[t], t))
        normalizers = None
        if self.task is not None:   # saved with the model: typed text is read as the task reads it
            normalizers = {side: self.task.normalizer(side) for side in ("source", "target")}
        return VocabTokenizer(list(known) + extra, level="word", normalizers=normalizers)


def _size(name: str, value, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def load_task(task: Union[str, Task], n_train: int = 20000, n_valid: int = 500, n_test: int = 500,
              seed: int = 0) -> TaskData:
    """Generate the splits of a built-in task (a name in ``TASKS`` or ``LABEL_TASKS``) or of a
    ``Task`` instance.

    Keys are drawn from one stream seeded by ``(task name, seed)``: first ``n_test`` distinct
    ones, then ``n_valid`` more, then ``n_train`` more. Splits are therefore disjoint and free of
    repeats, and test (and valid) do not change when only ``n_train`` changes.
    Raises ValueError when the task has fewer than ``n_train + n_valid + n_test`` distinct keys.
    """
    if isinstance(task, str):
        known = {**TASKS, **LABEL_TASKS}
        if task not in known:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(known)}")
        task = known[task]
    elif not isinstance(task, Task):
        raise TypeError(f"task must be a task name or a Task, not {type(task).__name__}")
    sizes = (_size("n_test", n_test, 0), _size("n_valid", n_valid, 0), _size("n_train", n_train, 1))
    seed = _size("seed", seed, 0)
    total = sum(sizes)
    if total > task.space:
        raise ValueError(f"task {task.name!r} has only {task.space} distinct examples; "
                         f"n_train + n_valid + n_test = {total}")
    rng = _Rng(f"cyformer.data/{task.name}/{seed}")
    # Drawing until enough distinct keys turn up stalls only when a request nearly exhausts a task
    # whose distribution is far from uniform; bound it and say so rather than spin.
    max_draws = 20 * total + 1000
    draws, seen, splits = 0, set(), []
    for n in sizes:
        examples: List[Pair] = []
        while len(examples) < n:
            if draws == max_draws:
                raise ValueError(f"task {task.name!r}: only {len(seen)} distinct examples after {draws} "
                                 f"draws, {total} requested; ask for fewer")
            draws += 1
            key = task.draw(rng)
            if key not in seen:
                seen.add(key)
                examples.append(task.render(key, rng))
        splits.append(examples)
    test, valid, train = splits
    return TaskData(task.name, train, valid, test, task)


def read_parallel(src_path: Union[str, os.PathLike], tgt_path: Union[str, os.PathLike],
                  encoding: str = "utf-8", skip_empty: bool = False) -> List[Pair]:
    """A parallel corpus: line ``i`` of ``src_path`` translates to line ``i`` of ``tgt_path``.

    Returns ``[(source_line, target_line), ...]`` with line endings (and a UTF-8 byte-order mark)
    removed and the text otherwise unchanged. Raises ValueError when the line counts differ, when
    the files hold no line, or when a line is blank on either side unless ``skip_empty`` drops
    those pairs.
    """
    sides = [_read_lines(src_path, encoding), _read_lines(tgt_path, encoding)]
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{os.fspath(src_path)} has {len(sides[0])} lines but {os.fspath(tgt_path)} "
                         f"has {len(sides[1])}; a parallel corpus needs one target line per source line")
    pairs = list(zip(*sides))
    if not pairs:
        raise ValueError(f"{os.fspath(src_path)} and {os.fspath(tgt_path)} are empty")
    blank = [i + 1 for i, (s, t) in enumerate(pairs) if not s.strip() or not t.strip()]
    if blank and not skip_empty:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        raise ValueError(f"{len(blank)} of {len(pairs)} line pairs of {os.fspath(src_path)} / "
                         f"{os.fspath(tgt_path)} are blank on a side (lines {shown}); "
                         f"pass skip_empty=True to drop them")
    if blank:
        pairs = [p for p in pairs if p[0].strip() and p[1].strip()]
        if not pairs:
            raise ValueError(f"every line pair of {os.fspath(src_path)} / {os.fspath(tgt_path)} is blank")
    return pairs


def _read_lines(path, encoding: str) -> List[str]:
    # Universal newlines: \n, \r\n and \r end a line, nothing else (unlike str.splitlines, which
    # would also split on \x0b, \x1c, U+2028 ... inside a sentence and shift the alignment).
    with open(path, encoding=encoding) as f:
        lines = [line.rstrip("\n") for line in f]
    if lines and lines[0].startswith("\ufeff"):   # Windows editors prepend a BOM
        lines[0] = lines[0][1:]
    return lines
