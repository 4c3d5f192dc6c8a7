"""The built-in tasks (cyformer.data): determinism, disjoint splits, labels checked by independent
parsers and hand-written cases, tokenizer coverage, argument errors, and read_parallel."""
import datetime
import re

import numpy as np

import pytest

from cyformer.data import (LABEL_TASKS, TASKS, DatesTask, MajorityTask, SymbolTask, Task, TaskData, load_task,
                           number_to_words, read_parallel)

SMALL = dict(n_train=2000, n_valid=200, n_test=200)


@pytest.fixture(scope="module")
def small():
    return {name: load_task(name, seed=1, **SMALL) for name in TASKS}


def pairs(data):
    return data.train + data.valid + data.test


# -- an independent reading of the words, written without looking at the generator ------------------
_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                     "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_ORD = {w: i for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
                                   "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth "
                                   "nineteenth twentieth".split(), 1)}
_ORD["thirtieth"] = 30
_MONTHS = "january february march april may june july august september october november december".split()


def parse_number(words):
    """Accumulate like a person reads: units/tens add, hundred multiplies, thousand closes a group."""
    total = current = 0
    for w in words:
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        elif w != "and":
            raise ValueError(w)
    return total + current


def parse_year(words):
    if len(words) == 1:
        return int(words[0])
    if words[:2] == ["two", "thousand"]:
        return parse_number(words)
    century = parse_number(words[:1])
    rest = words[1:]
    if rest == ["hundred"]:
        return century * 100
    if rest[0] == "oh":
        return century * 100 + parse_number(rest[1:])
    return century * 100 + parse_number(rest)


def parse_day(words):
    if len(words) == 1 and words[0].isdigit():
        return int(words[0])
    if len(words) == 1 and re.fullmatch(r"\d+(st|nd|rd|th)", words[0]):
        return int(words[0][:-2])
    return sum(_TENS.get(w, 0) + _ORD.get(w, 0) for w in words)


def parse_date(source):
    words = source.split()
    month_at = next(i for i, w in enumerate(words) if w in _MONTHS or w in [m[:3] for m in _MONTHS])
    month = [m[:3] for m in _MONTHS].index(words[month_at][:3]) + 1
    year_from = max(month_at, max((i for i, w in enumerate(words) if w == ","), default=-1)) + 1
    day_words = [w for w in words[:month_at] + words[month_at + 1:year_from] if w not in ("the", "of", ",")]
    return datetime.date(parse_year(words[year_from:]), month, parse_day(day_words))


# -- labels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"), (100, "one hundred"),
    (105, "one hundred and five"), (999, "nine hundred and ninety nine"), (1000, "one thousand"),
    (1007, "one thousand and seven"), (1100, "one thousand one hundred"), (2010, "two thousand and ten"),
    (19999, "nineteen thousand nine hundred and ninety nine"), (100000, "one hundred thousand"),
    (342007, "three hundred and forty two thousand and seven"),
    (540312, "five hundred and forty thousand three hundred and twelve"),
])
def test_number_words_by_hand(n, words):
    assert number_to_words(n) == words
    assert parse_number(words.split()) == n


def test_number_to_words_range():
    with pytest.raises(ValueError, match="0 <= n < 1000000"):
        number_to_words(1_000_000)
    with pytest.raises(TypeError):
        number_to_words(1.5)


def test_numbers_labels(small):
    task = TASKS["numbers"]
    for source, target in pairs(small["numbers"]):
        assert re.fullmatch(r"[1-9]( \d)*|0", target), target
        assert parse_number(source.split()) == int(task.detokenize(target))
    sizes = {len(t.split()) for _, t in pairs(small["numbers"])}
    assert sizes == {1, 2, 3, 4, 5, 6}   # every magnitude is represented


def test_dates_forms_by_hand():
    assert DatesTask.forms(datetime.date(2004, 3, 21)) == [
        "the twenty first of march two thousand and four", "march the twenty first , two thousand and four",
        "march 21st , 2004", "march 21 , 2004", "21 march 2004", "21 mar 2004", "21st of march 2004"]
    assert DatesTask.forms(datetime.date(1905, 12, 2))[:3] == [
        "the second of december nineteen oh five", "december the second , nineteen oh five", "december 2nd , 1905"]
    assert DatesTask.forms(datetime.date(1900, 11, 30))[0] == "the thirtieth of november nineteen hundred"
    assert DatesTask.forms(datetime.date(2024, 2, 13))[:3] == [
        "the thirteenth of february twenty twenty four", "february the thirteenth , twenty twenty four",
        "february 13th , 2024"]
    assert DatesTask.forms(datetime.date(2000, 1, 22))[2] == "january 22nd , 2000"


def test_dates_labels(small):
    task = TASKS["dates"]
    used = set()
    for source, target in pairs(small["dates"]):
        iso = task.detokenize(target)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", iso) and target == " ".join(iso)
        date = datetime.date.fromisoformat(iso)   # a real calendar date
        assert datetime.date(1900, 1, 1) <= date <= datetime.date(2099, 12, 31)
        assert parse_date(source) == date, source
        used.add(DatesTask.forms(date).index(source))
    assert used == set(range(7))
    assert parse_date("february 29th , 2000") == datetime.date(2000, 2, 29)


def test_symbol_labels(small):
    for source, target in pairs(small["copy"]):
        assert target == source
    for source, target in pairs(small["reverse"]):
        assert target.split() == source.split()[::-1]
    for source, target in pairs(small["sort"]):
        assert target.split() == sorted(source.split())
    for name in ("copy", "reverse", "sort"):
        lengths = {len(s.split()) for s, _ in pairs(small[name])}
        assert lengths == set(range(3, 13))


def test_lengths_stay_within_the_declared_bounds(small):
    for name, data in small.items():
        task = TASKS[name]
        assert max(len(s.split()) for s, _ in pairs(data)) <= task.max_source_len
        assert max(len(t.split()) for _, t in pairs(data)) <= task.max_target_len
    longest = "seven hundred and seventy seven thousand seven hundred and seventy seven"
    assert number_to_words(777777) == longest and len(longest.split()) == TASKS["numbers"].max_source_len
    assert len(DatesTask.forms(datetime.date(2004, 9, 21))[0].split()) == TASKS["dates"].max_source_len


# -- splits ---------------------------------------------------------------------------------------
def test_splits_are_disjoint_and_sized(small):
    for name, data in small.items():
        assert (len(data.train), len(data.valid), len(data.test)) == (2000, 200, 200)
        assert data.name == name
        splits = [[s for s, _ in split] for split in (data.train, data.valid, data.test)]
        assert sum(len(set(s)) for s in splits) == len(set().union(*splits)) == 2400, name
    # dates: disjoint by the date itself, not only by the surface string
    dates = [{t for _, t in split} for split in (small["dates"].train, small["dates"].valid, small["dates"].test)]
    assert sum(map(len, dates)) == len(set().union(*dates)) == 2400


def test_pairs_are_single_space_token_strings(small):
    for data in small.values():
        for text in (x for pair in pairs(data) for x in pair):
            assert text == " ".join(text.split()) and text


def test_deterministic_and_seeded(small):
    for name in TASKS:
        again = load_task(name, seed=1, **SMALL)
        assert (again.train, again.valid, again.test) == (small[name].train, small[name].valid, small[name].test)
        other = load_task(name, seed=2, **SMALL)
        assert other.test != small[name].test
    # valid and test do not depend on n_train, so runs with different training sizes compare fairly
    fewer = load_task("dates", seed=1, n_train=50, n_valid=200, n_test=200)
    assert (fewer.valid, fewer.test) == (small["dates"].valid, small["dates"].test)
    assert set(fewer.train) < set(small["dates"].train)


def test_same_data_on_every_machine():
    """Pinned values: a change here means every published demo score silently changes meaning."""
    expected = {
        "copy": ("b o i o g n c q u a d", "b o i o g n c q u a d"),
        "reverse": ("v m g p z u s f y w", "w y f s u z p g m v"),
        "sort": ("u k b v u b", "b b k u u v"),
        "numbers": ("twenty three thousand eight hundred and seventy six", "2 3 8 7 6"),
        "dates": ("august 15 , 1965", "1 9 6 5 - 0 8 - 1 5"),
    }
    for name, first in expected.items():
        assert load_task(name, n_train=1, n_valid=0, n_test=1).test[0] == first


def test_default_sizes():
    data = load_task("numbers")
    assert (len(data.train), len(data.valid), len(data.test)) == (20000, 500, 500)
    assert len({s for s, _ in pairs(data)}) == 21000


# -- tokenization -----------------------------------------------------------------------------------
def test_tokenizer_covers_every_split(small):
    expected_sizes = {"copy": 30, "reverse": 30, "sort": 30, "numbers": 45, "dates": 346}
    for name, data in small.items():
        tok = data.build_tokenizer()
        assert tok.vocab_size == expected_sizes[name]
        for side, texts in (("source", [s for s, _ in pairs(data)]), ("target", [t for _, t in pairs(data)])):
            ids = tok.encode(texts, side=side)
            assert all(tok.unk_id not in i for i in ids)
            # decode writes text as a person does ("2004-03-21"), and that text reads back to the same ids
            written = tok.decode(ids, side=side)
            assert written == [data.task.detokenize(x, side) for x in texts]
            assert tok.encode(written, side=side) == ids
        # ids come from the task's fixed vocabulary: independent of seed and sizes
        assert load_task(name, seed=5, n_train=10, n_valid=0, n_test=0).build_tokenizer().vocab == tok.vocab


def test_tokenizer_includes_tokens_outside_the_task_vocabulary():
    data = TaskData("custom", train=[("a b", "x")], valid=[("b c", "y")], test=[("zz", "y")])
    tok = data.build_tokenizer()
    assert set(tok.vocab) == {"<pad>", "</s>", "<unk>", "<s>", "a", "b", "c", "x", "y", "zz"}
    assert list(tok.vocab)[4:6] == ["b", "y"]   # most frequent first


def test_detokenize_and_tokenize_are_inverse(small):
    numbers, dates = TASKS["numbers"], TASKS["dates"]
    assert numbers.detokenize("3 4 2 0 0 7") == "342007"
    assert dates.detokenize("2 0 0 4 - 0 3 - 2 1") == "2004-03-21"
    assert dates.detokenize("march 21st , 2004", side="source") == "march 21st, 2004"
    assert TASKS["reverse"].detokenize("c b a") == "c b a"
    assert dates.tokenize("2004-03-21", side="target") == "2 0 0 4 - 0 3 - 2 1"
    # what a user types, normalized into the task's token form
    assert dates.tokenize("March 21st, 2004") == "march 21st , 2004"
    assert dates.tokenize("The Twenty-First of March Two Thousand and Four") == \
        "the twenty first of march two thousand and four"
    assert numbers.tokenize("Forty-Two thousand") == "forty two thousand"
    for name, data in small.items():
        task = TASKS[name]
        for source, target in pairs(data)[:500]:
            assert task.tokenize(task.detokenize(source, "source"), "source") == source
            assert task.tokenize(task.detokenize(target, "target"), "target") == target
    with pytest.raises(ValueError, match="side must be"):
        dates.detokenize("x", side="tgt")


# -- argument errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,kwargs,exc,match", [
    (("french",), {}, ValueError, "unknown task 'french'; known tasks: copy, reverse, sort, numbers, dates, tagging, classify"),
    ((3,), {}, TypeError, "task must be a task name or a Task"),
    (("copy",), dict(n_train=0), ValueError, "n_train must be >= 1"),
    (("copy",), dict(n_test=-1), ValueError, "n_test must be >= 0"),
    (("copy",), dict(n_valid=2.5), TypeError, "n_valid must be an int"),
    (("copy",), dict(n_train=True), TypeError, "n_train must be an int, not bool"),
    (("copy",), dict(seed=-1), ValueError, "seed must be >= 0"),
    (("numbers",), dict(n_train=999_500, n_valid=500, n_test=1), ValueError,
     "task 'numbers' has only 1000000 distinct examples; n_train \\+ n_valid \\+ n_test = 1000001"),
    (("dates",), dict(n_train=80_000), ValueError, "task 'dates' has only 73049 distinct"),
])
def test_bad_arguments_say_what_is_wrong(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        load_task(*args, **kwargs)


def test_small_custom_task_is_exhausted_exactly():
    tiny = SymbolTask("sort", symbols="ab", min_len=1, max_len=2, name="tiny")
    assert tiny.space == 6
    data = load_task(tiny, n_train=4, n_valid=1, n_test=1)
    assert sorted(s for s, _ in pairs(data)) == ["a", "a a", "a b", "b", "b a", "b b"]
    assert dict(pairs(data))["b a"] == "a b"
    with pytest.raises(ValueError, match="has only 6 distinct"):
        load_task(tiny, n_train=7, n_valid=0, n_test=0)


def test_a_task_that_keeps_repeating_itself_fails_instead_of_spinning():
    class Stuck(Task):
        name, space = "stuck", 100

        def draw(self, rng):
            return 0

        def render(self, key, rng):
            return "a", "a"

    with pytest.raises(ValueError, match="only 1 distinct examples after 1040 draws, 2 requested"):
        load_task(Stuck(), n_train=2, n_valid=0, n_test=0)


def test_symbol_task_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        SymbolTask("shuffle")
    with pytest.raises(ValueError, match="distinct non-empty tokens"):
        SymbolTask("copy", symbols=["a", "a"])
    with pytest.raises(ValueError, match="min_len <= max_len"):
        SymbolTask("copy", min_len=4, max_len=3)


# -- read_parallel ----------------------------------------------------------------------------------
def write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_read_parallel(tmp_path):
    src = write(tmp_path / "src.txt", "\ufeffein Haus\r\nzwei Häuser\r\n")
    tgt = write(tmp_path / "tgt.txt", "a house\ntwo houses")   # no final newline
    assert read_parallel(src, str(tgt)) == [("ein Haus", "a house"), ("zwei Häuser", "two houses")]


def test_read_parallel_counts_must_match(tmp_path):
    src = write(tmp_path / "src.txt", "a\nb\nc\n")
    tgt = write(tmp_path / "tgt.txt", "x\ny\n")
    with pytest.raises(ValueError, match=r"src.txt has 3 lines but .*tgt.txt has 2"):
        read_parallel(src, tgt)


def test_read_parallel_empty_files(tmp_path):
    src, tgt = write(tmp_path / "src.txt", ""), write(tmp_path / "tgt.txt", "")
    with pytest.raises(ValueError, match="src.txt and .*tgt.txt are empty"):
        read_parallel(src, tgt)
    with pytest.raises(ValueError, match="has 0 lines but .* has 1"):
        read_parallel(src, write(tmp_path / "one.txt", "x\n"))
    with pytest.raises(FileNotFoundError):
        read_parallel(tmp_path / "missing.txt", tgt)


def test_read_parallel_blank_lines(tmp_path):
    src = write(tmp_path / "src.txt", "a\n\nc\n")
    tgt = write(tmp_path / "tgt.txt", "x\ny\n  \n")
    with pytest.raises(ValueError, match=r"2 of 3 line pairs .* blank on a side \(lines 2, 3\); pass skip_empty"):
        read_parallel(src, tgt)
    assert read_parallel(src, tgt, skip_empty=True) == [("a", "x")]
    with pytest.raises(ValueError, match="every line pair"):
        read_parallel(write(tmp_path / "b1.txt", "\n"), write(tmp_path / "b2.txt", "z\n"), skip_empty=True)


# -- labelling tasks (an encoder with a head) ----------------------------------------------------------
@pytest.fixture(scope="module")
def labelled():
    return {name: load_task(name, seed=1, **SMALL) for name in LABEL_TASKS}


def test_label_tasks_are_seeded_disjoint_and_pinned(labelled):
    for name, data in labelled.items():
        task = LABEL_TASKS[name]
        assert task.objective in ("token_classification", "sequence_classification")
        assert (len(data.train), len(data.valid), len(data.test)) == (2000, 200, 200)
        splits = [[s for s, _ in split] for split in (data.train, data.valid, data.test)]
        assert sum(len(set(s)) for s in splits) == len(set().union(*splits)) == 2400, name
        again = load_task(name, seed=1, **SMALL)
        assert (again.train, again.test) == (data.train, data.test)
        assert load_task(name, seed=2, **SMALL).test != data.test
        assert max(len(s.split()) for s, _ in pairs(data)) <= task.max_source_len
        for text in (x for pair in pairs(data) for x in pair):
            assert text == " ".join(text.split()) and text
    expected = {"tagging": ("they light some red quiet park today .", "PRON VERB DET ADJ ADJ NOUN ADV PUNCT"),
                "classify": ("cat the horse dog drum and", "animals")}
    for name, first in expected.items():
        assert load_task(name, n_train=1, n_valid=0, n_test=1, seed=0).test[0] == first


def test_tagging_labels(labelled):
    """One tag per word, each one the word can take, and the ambiguous words really vary."""
    from cyformer import data as d
    allowed = {}
    for words, tag in ((d._DETS, "DET"), (d._ADJS, "ADJ"), (d._NOUNS, "NOUN"), (d._NAMES, "PROPN"),
                       (d._PRONOUNS, "PRON"), (d._VERBS, "VERB"), (d._PREPS, "ADP"), (d._ADVS, "ADV"),
                       (d._CONJS, "CONJ"), (["."], "PUNCT")):
        for w in words:
            allowed.setdefault(w, set()).add(tag)
    seen = {}
    task = LABEL_TASKS["tagging"]
    for source, tags in pairs(labelled["tagging"]):
        words, tags = source.split(), tags.split()
        assert len(words) == len(tags) and words[-1] == "." and tags[-1] == "PUNCT"
        assert set(tags) <= set(task.labels)
        for w, t in zip(words, tags):
            assert t in allowed[w], (w, t, source)
            seen.setdefault(w, set()).add(t)
        # a verb follows every subject: the first VERB comes after the first NOUN / PRON / PROPN
        first_verb = tags.index("VERB")
        assert any(t in ("NOUN", "PRON", "PROPN") for t in tags[:first_verb])
    assert seen["duck"] == {"NOUN", "VERB"} and seen["light"] == {"ADJ", "NOUN", "VERB"}


def test_majority_labels(labelled):
    from cyformer.data import _TOPICS
    topic_of = {w: t for t, ws in _TOPICS.items() for w in ws}
    margins = []
    for source, label in pairs(labelled["classify"]):
        counts = {t: 0 for t in _TOPICS}
        for w in source.split():
            if w in topic_of:
                counts[topic_of[w]] += 1
        ranked = sorted(counts.values(), reverse=True)
        assert counts[label] == ranked[0] > ranked[1]
        margins.append(ranked[0] - ranked[1])
    assert np.mean(np.array(margins) == 1) > 0.4   # many close calls: the model must count
    assert MajorityTask.label("cat rain".split()) is None and MajorityTask.label(["the"]) is None


def test_label_task_tokenizer_holds_the_source_side_only(labelled):
    for name, data in labelled.items():
        tok = data.build_tokenizer()
        assert tok.vocab_size == 4 + len(LABEL_TASKS[name].vocabulary)
        assert not set(LABEL_TASKS[name].labels) & set(tok.vocab)
        ids = tok.encode([s for s, _ in pairs(data)], add_eos=False)
        assert all(tok.unk_id not in i for i in ids)
