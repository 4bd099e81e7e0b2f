"""The SWORD and WordNet readers on the installed Debian packages, and the text tasks' splits.

Needs `apt-get install -y --no-install-recommends sword-text-kjv sword-text-web wordnet-base`
(.ci/run installs them) and pysword (requirements-text.txt).
"""

from __future__ import annotations

import numpy as np
import pytest

from model import text_data as td


def test_clean_osis_strips_markup_and_keeps_words() -> None:
    raw = (
        '<w lemma="strong:H0430">God</w><note placement="foot">The Hebrew word "Elohim".'
        '</note><w lemma="strong:H1254">created</w> <transChange type="added">was</transChange>'
        ' the <divineName>LORD</divineName>.<title type="psalm">A Psalm</title>'
        '<div type="x-milestone" sID="pv1"/> \n “<l level="1"/>Hi</l> .'
    )
    assert td.clean_osis(raw) == "God created was the LORD. “Hi."
    assert td.clean_osis("") == "" and td.clean_osis('<div sID="x"/>  ') == ""


def test_kjv_and_web_known_verses() -> None:
    kjv, web = td.read_sword(td.KJV), td.read_sword(td.WEB)
    assert kjv[("John", 11, 35)] == "Jesus wept."
    assert web[("John", 11, 35)] == "Jesus wept."
    assert kjv[("Gen", 1, 1)] == "In the beginning God created the heaven and the earth."
    assert web[("Gen", 1, 1)] == "In the beginning, God created the heavens and the earth."
    assert kjv[("Rev", 22, 21)] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert kjv[("Ps", 3, 1)].startswith("LORD, how are they increased")  # superscription gone
    assert len(kjv) == 31_102 and len(web) == 37_457
    assert ("Tob", 1, 1) in web and ("Tob", 1, 1) not in kjv
    assert all(t and "<" not in t and ">" not in t and "  " not in t for t in kjv.values())
    assert all(t == t.strip() for t in web.values())


def test_bible_task_splits_by_verse() -> None:
    task = td.bible_task()
    assert task.sizes() == {"bank": 20_000, "query": 2_000, "train": 28_552}
    assert len(set(task.bank_keys)) == 20_000
    assert task.query_keys == task.bank_keys[:2_000]
    assert np.array_equal(task.query_target, np.arange(2_000))
    held_out = set(task.bank_keys)  # queries are bank verses: neither text of either is trained
    assert not held_out & set(task.train_keys)
    assert len(task.train_texts) == len(task.train_keys)
    kjv, web = td.read_sword(td.KJV), td.read_sword(td.WEB)
    first = task.bank_keys[0]
    book, cv = first.rsplit(" ", 1)
    key = (book, *map(int, cv.split(":")))
    assert task.bank_texts[0] == kjv[key] and task.query_texts[0] == web[key]  # type: ignore[index]
    again = td.bible_task()
    assert again.bank_keys == task.bank_keys and again.train_texts == task.train_texts  # seeded
    assert td.bible_task(seed=1).bank_keys != task.bank_keys


def test_wordnet_reader() -> None:
    synsets = td.read_wordnet()
    assert len(synsets) == 117_659
    entity = synsets["n00001740"]
    assert entity.words == ("entity",)
    assert entity.gloss.startswith("that which is perceived or known or inferred")
    plentiful = synsets["a00015854"]  # a satellite adjective, filed under "a"
    assert plentiful.words == ("plentiful",)
    assert plentiful.gloss == "existing in great number or quantity"
    assert plentiful.examples == ("rhinoceroses were once plentiful here",)
    assert sum(bool(s.examples) for s in synsets.values()) == 32_923


def test_parse_gloss() -> None:
    gloss = 'have a firm understanding of; be on top of; "Do you control these data?"; "ok"'
    assert td.parse_gloss(gloss) == (
        "have a firm understanding of; be on top of",
        ("Do you control these data?", "ok"),
    )
    assert td.parse_gloss("a definition only") == ("a definition only", ())


def test_wordnet_task_splits_by_synset() -> None:
    task = td.wordnet_task()
    assert task.sizes() == {"bank": 50_000, "query": 2_000, "train": 95_606}
    assert len(set(task.bank_keys)) == 50_000
    assert task.query_keys == task.bank_keys[:2_000]
    assert not set(task.bank_keys) & set(task.train_keys)
    synsets = td.read_wordnet()
    s = synsets[task.query_keys[0]]
    assert task.query_texts[0] == s.examples[0] and task.bank_texts[0] == s.gloss


def test_missing_sources_say_which_package(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mods.d").mkdir()
    with pytest.raises(td.TextDataError, match="apt-get install -y sword-text-kjv"):
        td.read_sword(td.KJV, tmp_path)
    with pytest.raises(td.TextDataError, match="wordnet-base"):
        list(td.iter_wordnet(tmp_path))
    with pytest.raises(ValueError, match="expected a text task among"):
        td.load_task("quran")
