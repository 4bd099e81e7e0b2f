"""Real labelled text for the text codec, read offline from Debian packages, with fixed splits.

Sources (install: `apt-get install -y --no-install-recommends sword-text-kjv sword-text-web
wordnet-base`):

- The Bible in two translations, SWORD zText modules under /usr/share/sword: `engKJV2006eb`
  (King James Version, KJV versification) and `engWEB2015eb` (World English Bible, NRSVA
  versification; same book/chapter/verse numbering as the KJV for the 66 protocanonical books
  except 3 John 1:15 and Revelation 12:18, which only NRSVA has). A zText module keeps, per
  testament, `*.bzz` (zlib-compressed blocks of OSIS-marked verse text, one block per book here),
  `*.bzs` (per block: offset, compressed size, uncompressed size; 3 x uint32) and `*.bzv` (per
  verse slot of the versification, in canonical order with a slot for each testament, book and
  chapter heading: block number, offset in block, length; uint32, uint32, uint16). `pysword`
  (pinned in requirements-text.txt) maps (book, chapter, verse) to slots and decompresses; the
  markup is stripped here (`clean_osis`): notes, titles (Psalm superscriptions included) and
  milestones go with their content, every other tag keeps its text, whitespace is collapsed.
  Verses empty after cleaning are dropped (KJV 31,102 verses; WEB 37,457, which leaves 7 KJV
  verses out as later additions). A verse is *aligned* when both translations have it, keyed by
  (OSIS book, chapter, verse): 31,095 verses.
- WordNet 3.0 (`wordnet-base`): /usr/share/wordnet/data.{noun,verb,adj,adv}, one synset per
  line (`offset lex_filenum ss_type w_cnt word lex_id ... | gloss`); the gloss is a definition
  followed by zero or more quoted example sentences (`; "..."`). Synset id = pos letter + offset
  (`n00001740`; satellite adjectives `s` count as `a`). 117,659 synsets, 32,923 with examples.

Splits (seeded by `seed`, default 0; fixed by the item's key, never by its text or embedding):

- Bible (`bible_task`): the aligned verses in canonical order are permuted with
  `numpy.random.default_rng(seed)`. The first 20,000 are the BANK (their KJV text is stored);
  the first 2,000 of those are the QUERIES (their WEB text is searched for; the relevant item is
  the same verse's KJV text in the bank, so exactly one bank item is right). The other 11,095
  aligned verses are TRAINING items, both translations (22,190 texts), plus the 6,362 WEB
  verses with no KJV counterpart (the deuterocanonical books, the NRSVA-only verses): 28,552
  texts. Bank and query verses are never used for training or model selection: not their KJV,
  not their WEB text.
- WordNet (`wordnet_task`): synset ids sorted, permuted with `default_rng(seed)`. The first
  2,000 synsets in that order that have an example sentence are the QUERY synsets (query text:
  their first example; relevant item: their own gloss); the bank is those 2,000 plus the next
  48,000 synsets in order that are not query synsets: 50,000 glosses. Every other synset
  (65,659) trains, with its gloss and all of its examples: 95,606 texts. The WordNet labels
  are weak (an example sentence is often nearer another sense's gloss), so this task is scored
  by agreement with exact float32 search, not by the labels.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SWORD_ROOT = Path("/usr/share/sword")
WORDNET_DIR = Path("/usr/share/wordnet")
KJV = "engKJV2006eb"
WEB = "engWEB2015eb"
WORDNET_FILES = ("noun", "verb", "adj", "adv")

BIBLE_BANK = 20_000
BIBLE_QUERIES = 2_000
WORDNET_BANK = 50_000
WORDNET_QUERIES = 2_000

VerseKey = tuple[str, int, int]  # (OSIS book, chapter, verse), e.g. ("John", 11, 35)


class TextDataError(RuntimeError):
    """A text source is missing or unreadable; the message says which package installs it."""


# ------------------------------------------------------------------------------------ cleaning

# Elements whose content is not verse text: dropped with their content.
_DROP = ("note", "title", "rdg", "rdggroup", "catchword", "figure", "index")
_DROP_RE = re.compile(
    r"<(" + "|".join(_DROP) + r")\b[^>]*?(?<!/)>.*?</\1\s*>|<(" + "|".join(_DROP) + r")\b[^>]*/>",
    re.IGNORECASE | re.DOTALL,
)
_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")


def clean_osis(raw: str) -> str:
    """OSIS verse markup -> plain text with single spaces, stripped.

    Notes, titles and readings go with their content; a note between two letters
    ("God<note>..</note>created") leaves a space; every other tag goes and keeps its text.
    """

    def drop(match: re.Match[str]) -> str:
        before = raw[match.start() - 1 : match.start()]
        after = raw[match.end() : match.end() + 1]
        return " " if before.isalnum() and after.isalnum() else ""

    text = _DROP_RE.sub(drop, raw)
    text = _TAG_RE.sub(" ", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    text = text.replace("&apos;", "'").replace("&amp;", "&")
    text = _SPACE_RE.sub(" ", text).strip()
    # a tag replaced by a space before punctuation ("<w>wept</w>." is fine, "</l> ." is not)
    text = re.sub(r" ([.,;:!?)\]’”])", r"\1", text)
    return re.sub(r"([(\[‘“]) ", r"\1", text)


# --------------------------------------------------------------------------------------- Bible


def _module_path(module: str, root: Path) -> Path:
    conf = root / "mods.d" / f"{module}.conf"
    if not conf.is_file():
        package = {KJV: "sword-text-kjv", WEB: "sword-text-web"}.get(module, "a sword-text-*")
        raise TextDataError(
            f"SWORD module {module} not found ({conf} missing): apt-get install -y {package}"
        )
    return conf


def _conf(module: str, root: Path) -> dict[str, str]:
    """The module's mods.d conf as {lower-case key: value} (first value of repeated keys)."""
    out: dict[str, str] = {}
    for line in _module_path(module, root).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            out.setdefault(key.strip().lower(), value.strip())
    return out


_VERSE_RECORD = np.dtype([("block", "<u4"), ("offset", "<u4"), ("length", "<u2")])
_BLOCK_RECORD = np.dtype([("offset", "<u4"), ("size", "<u4"), ("raw_size", "<u4")])


def _read_testament(folder: Path, testament: str) -> tuple[np.ndarray, list[bytes]]:
    """(verse records, decompressed blocks) of one testament of a zText module (BOOK blocks)."""
    verses = np.fromfile(folder / f"{testament}.bzv", dtype=_VERSE_RECORD)
    blocks_index = np.fromfile(folder / f"{testament}.bzs", dtype=_BLOCK_RECORD)
    data = (folder / f"{testament}.bzz").read_bytes()
    blocks = []
    for b in blocks_index:
        start, size = int(b["offset"]), int(b["size"])
        raw = zlib.decompress(data[start : start + size]) if size else b""
        if len(raw) != int(b["raw_size"]):
            raise TextDataError(f"{folder}/{testament}.bzz: block at {start} is corrupt")
        blocks.append(raw)
    return verses, blocks


@lru_cache(maxsize=4)
def read_sword(module: str, root: Path = SWORD_ROOT) -> dict[VerseKey, str]:
    """Every non-empty verse of a SWORD zText Bible module: {(OSIS book, chapter, verse): text}.

    Canonical order (dicts keep insertion order). The verse slots follow the module's
    versification (pysword's canon tables, from SWORD's headers): per testament, slot 0 is the
    module heading, 1 the testament heading, then per book a book heading and per chapter a
    chapter heading followed by its verses. Text is OSIS, cleaned with `clean_osis`.
    """
    conf = _conf(module, root)
    if conf.get("moddrv", "").lower() != "ztext" or conf.get("compresstype", "ZIP") != "ZIP":
        raise TextDataError(f"{module}: expected a zlib zText module, got {conf.get('moddrv')}")
    if conf.get("blocktype", "BOOK") != "BOOK":
        raise TextDataError(f"{module}: expected BlockType=BOOK, got {conf.get('blocktype')}")
    try:
        from pysword.canons import canons
    except ImportError as e:  # pragma: no cover - the text extra is missing
        raise TextDataError("pysword is missing: pip install -r requirements-text.txt") from e
    canon = canons[conf.get("versification", "KJV").lower()]
    folder = (root / conf["datapath"]).resolve()
    encoding = conf.get("encoding", "UTF-8")
    out: dict[VerseKey, str] = {}
    for testament in ("ot", "nt"):
        verses, blocks = _read_testament(folder, testament)
        slot = 2  # after the module and testament headings
        for _name, osis, _abbrev, chapter_lengths in canon[testament]:
            slot += 1  # book heading
            for chapter, n_verses in enumerate(chapter_lengths, start=1):
                slot += 1  # chapter heading
                for verse in range(1, n_verses + 1):
                    if slot < len(verses):
                        rec = verses[slot]
                        block = blocks[int(rec["block"])] if rec["block"] < len(blocks) else b""
                        start = int(rec["offset"])
                        raw = block[start : start + int(rec["length"])]
                        text = clean_osis(raw.decode(encoding, errors="replace"))
                        if text:
                            out[(osis, chapter, verse)] = text
                    slot += 1
    return out


@dataclass(frozen=True)
class TextTask:
    """A retrieval task: a bank of texts, queries with one relevant bank item, training texts.

    query_target[i] is the bank index of query i's relevant item. Keys name the items the texts
    came from (verse keys as "Book c:v", synset ids), so splits can be checked by item.
    """

    name: str
    bank_keys: tuple[str, ...]
    bank_texts: tuple[str, ...]
    query_keys: tuple[str, ...]
    query_texts: tuple[str, ...]
    query_target: np.ndarray  # (n_queries,) int64 index into the bank
    train_keys: tuple[str, ...]  # one per training text (an item may give several texts)
    train_texts: tuple[str, ...]

    def parts(self) -> dict[str, tuple[str, ...]]:
        return {"bank": self.bank_texts, "query": self.query_texts, "train": self.train_texts}

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.parts().items()}


def verse_name(key: VerseKey) -> str:
    return f"{key[0]} {key[1]}:{key[2]}"


def bible_task(seed: int = 0, root: Path = SWORD_ROOT) -> TextTask:
    """KJV bank, WEB paraphrase queries, the rest for training (see the module docstring)."""
    kjv, web = read_sword(KJV, root), read_sword(WEB, root)
    aligned = [k for k in kjv if k in web]  # canonical KJV order
    if len(aligned) < BIBLE_BANK + 1000:
        raise TextDataError(f"expected ~31,000 aligned verses, got {len(aligned)}")
    order = np.random.default_rng(seed).permutation(len(aligned))
    bank = [aligned[i] for i in order[:BIBLE_BANK]]
    queries = bank[:BIBLE_QUERIES]
    rest = [aligned[i] for i in order[BIBLE_BANK:]]
    aligned_set = set(aligned)
    train_pairs = [(k, kjv[k]) for k in rest] + [(k, web[k]) for k in rest]
    train_pairs += [(k, t) for k, t in web.items() if k not in aligned_set]
    return TextTask(
        name="bible",
        bank_keys=tuple(verse_name(k) for k in bank),
        bank_texts=tuple(kjv[k] for k in bank),
        query_keys=tuple(verse_name(k) for k in queries),
        query_texts=tuple(web[k] for k in queries),
        query_target=np.arange(BIBLE_QUERIES, dtype=np.int64),
        train_keys=tuple(verse_name(k) for k, _ in train_pairs),
        train_texts=tuple(t for _, t in train_pairs),
    )


# ------------------------------------------------------------------------------------- WordNet


@dataclass(frozen=True)
class Synset:
    id: str  # pos letter + 8-digit offset, e.g. "n00001740"
    words: tuple[str, ...]
    gloss: str  # the definition, without the examples
    examples: tuple[str, ...]


_EXAMPLE_RE = re.compile(r'"([^"]*)"')


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """WordNet gloss -> (definition, example sentences). Examples are the quoted parts."""
    first = gloss.find('"')
    definition = gloss if first < 0 else gloss[:first]
    definition = _SPACE_RE.sub(" ", definition).strip().rstrip(";").strip()
    examples = tuple(
        e for e in (_SPACE_RE.sub(" ", x).strip() for x in _EXAMPLE_RE.findall(gloss[first:])) if e
    )
    return definition, examples if first >= 0 else ()


def _parse_data_line(line: str) -> Synset | None:
    if not line or line.startswith(" "):  # the licence header lines start with two spaces
        return None
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    offset, pos, n_words = fields[0], fields[2], int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(n_words))
    definition, examples = parse_gloss(gloss.strip()) if sep else ("", ())
    return Synset(("a" if pos == "s" else pos) + offset, words, definition, examples)


def iter_wordnet(wordnet_dir: Path = WORDNET_DIR) -> Iterator[Synset]:
    for part in WORDNET_FILES:
        path = wordnet_dir / f"data.{part}"
        if not path.is_file():
            raise TextDataError(f"WordNet file {path} missing: apt-get install -y wordnet-base")
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                synset = _parse_data_line(line.rstrip("\n"))
                if synset is not None and synset.gloss:
                    yield synset


@lru_cache(maxsize=2)
def read_wordnet(wordnet_dir: Path = WORDNET_DIR) -> dict[str, Synset]:
    """Every synset with a non-empty definition, by id."""
    return {s.id: s for s in iter_wordnet(wordnet_dir)}


def wordnet_task(seed: int = 0, wordnet_dir: Path = WORDNET_DIR) -> TextTask:
    """Gloss bank, example-sentence queries, other synsets for training (module docstring)."""
    synsets = read_wordnet(wordnet_dir)
    ids = sorted(synsets)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    queries = [s for s in order if synsets[s].examples][:WORDNET_QUERIES]
    query_set = set(queries)
    others = [s for s in order if s not in query_set]
    bank = queries + others[: WORDNET_BANK - WORDNET_QUERIES]
    train = others[WORDNET_BANK - WORDNET_QUERIES :]
    train_pairs = [(s, synsets[s].gloss) for s in train]
    train_pairs += [(s, e) for s in train for e in synsets[s].examples]
    return TextTask(
        name="wordnet",
        bank_keys=tuple(bank),
        bank_texts=tuple(synsets[s].gloss for s in bank),
        query_keys=tuple(queries),
        query_texts=tuple(synsets[s].examples[0] for s in queries),
        query_target=np.arange(WORDNET_QUERIES, dtype=np.int64),
        train_keys=tuple(k for k, _ in train_pairs),
        train_texts=tuple(t for _, t in train_pairs),
    )


TASKS = {"bible": bible_task, "wordnet": wordnet_task}


def load_task(name: str, seed: int = 0) -> TextTask:
    if name not in TASKS:
        raise ValueError(f"expected a text task among {sorted(TASKS)}, got {name!r}")
    return TASKS[name](seed)


def texts_digest(texts: tuple[str, ...] | list[str]) -> str:
    """sha256 of the texts in order (a cache key: the same texts embed to the same rows)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
