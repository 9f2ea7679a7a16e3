"""Read the whole corpus once before anything is sent: count it and find every bad record.

Memory: 8 bytes per record (a 64-bit hash of each id, to find duplicates), nothing else
grows with the corpus.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from .readers import CorpusError, Source
from .records import FieldSpec, Invalid, Record, build_record

log = logging.getLogger(__name__)

SHOWN_ERRORS = 20
# The records a field name is looked for in before the job starts: enough that a field some
# records lack (sparse JSON) is still seen, few enough to cost milliseconds.
FIELD_SAMPLE = 1000


def _id_hash(record_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def text_hash64(content_hash: str) -> int:
    """The first 64 bits of a record's content hash, as a signed int (8 bytes per record)."""
    return int(content_hash[:16], 16) - (1 << 63)


def id_hashes(record_ids: list[str]) -> np.ndarray:
    return np.fromiter((_id_hash(i) for i in record_ids), dtype=np.int64, count=len(record_ids))


def _repeated_sorted(ordered: np.ndarray) -> set[int]:
    return {int(h) for h in np.unique(ordered[1:][ordered[1:] == ordered[:-1]])} if ordered.size else set()


def _repeated(values: array) -> set[int]:
    return _repeated_sorted(np.sort(np.frombuffer(values, dtype=np.int64)))


class DuplicateFilter:
    """First occurrence of an id wins; later ones are invalid. Tracks only ids known to repeat."""

    def __init__(self, repeated_hashes: set[int], unit: str = "line") -> None:
        self._repeated = repeated_hashes
        self._unit = unit
        self._first_line: dict[str, int] = {}

    def check(self, record: Record) -> Invalid | None:
        if not self._repeated or _id_hash(record.record_id) not in self._repeated:
            return None
        first = self._first_line.setdefault(record.record_id, record.line)
        if first == record.line:
            return None
        return Invalid(record.line, record.record_id, f"duplicate id (first at {self._unit} {first})")


@dataclass
class Scan:
    records_read: int = 0
    invalid_count: int = 0
    invalid_shown: list[Invalid] = field(default_factory=list)
    repeated_hashes: set[int] = field(default_factory=set)
    # 64-bit hashes of texts that occur more than once: embedded once per job.
    repeated_texts: set[int] = field(default_factory=set)
    # Valid records whose text held NUL characters, removed (build_record says why).
    nul_removed: int = 0
    # Sorted 64-bit hashes of every id in the source (invalid records' too, where they have
    # one): `--sync full` deletes stored ids that are not among them.
    source_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # What the report calls a record's number: "line" in a file, "record" in Records.
    unit: str = "line"

    def has_id(self, record_ids: list[str]) -> np.ndarray:
        """Which of these ids the source holds (by 64-bit hash)."""
        hashes = id_hashes(record_ids)
        where = np.searchsorted(self.source_ids, hashes)
        where[where == self.source_ids.size] = 0
        return self.source_ids[where] == hashes if self.source_ids.size else np.zeros(len(record_ids), dtype=bool)

    def add_invalid(self, invalid: Invalid) -> None:
        self.invalid_count += 1
        if len(self.invalid_shown) < SHOWN_ERRORS:
            self.invalid_shown.append(invalid)

    def report(self) -> str:
        lines = [i.describe(self.unit) for i in self.invalid_shown]
        if self.invalid_count > len(self.invalid_shown):
            lines.append(f"... and {self.invalid_count - len(self.invalid_shown)} more invalid records")
        return "\n".join(lines)


class InvalidInput(Exception):
    """The corpus has invalid records and --skip-invalid was not given: nothing was sent."""

    def __init__(self, scan: Scan) -> None:
        self.scan = scan
        # Records come from the Python API, where the option is an argument, not a flag.
        option = "skip_invalid=True" if scan.unit == "record" else "--skip-invalid"
        super().__init__(
            f"{scan.invalid_count} of {scan.records_read} records are invalid; nothing was sent "
            f"(pass {option} to send the valid ones):\n{scan.report()}"
        )


def valid_records(corpus: Source, spec: FieldSpec, scan: Scan | None = None) -> Iterator[Record | Invalid]:
    """Every record of the corpus, built and checked; position is its index among all records read."""
    duplicates = DuplicateFilter(scan.repeated_hashes if scan else set(), getattr(corpus, "unit", "line"))
    # The fields the job reads: a Parquet file reads only those columns.
    fields = (spec.id_field, *spec.text_fields, *spec.metadata_fields)
    for position, raw in enumerate(corpus.records(fields)):
        built = build_record(raw, position, spec)
        if isinstance(built, Record):
            built = duplicates.check(built) or built
        yield built


def scan_corpus(corpus: Source, spec: FieldSpec) -> Scan:
    scan = Scan(unit=getattr(corpus, "unit", "line"))
    ids = array("q")  # every id the source holds, invalid records' too where they have one
    texts = array("q")
    for built in valid_records(corpus, spec):
        scan.records_read += 1
        if isinstance(built, Invalid):
            scan.add_invalid(built)
            if built.record_id is not None:
                ids.append(_id_hash(built.record_id))
        else:
            ids.append(_id_hash(built.record_id))
            texts.append(text_hash64(built.content_hash))
            scan.nul_removed += built.nul_removed
    # A repeat that involves an invalid record never reaches DuplicateFilter twice, so one
    # array serves both duplicate detection and --sync full.
    scan.source_ids = np.array(ids, dtype=np.int64)
    del ids
    scan.source_ids.sort()
    scan.repeated_hashes = _repeated_sorted(scan.source_ids)
    scan.repeated_texts = _repeated(texts)
    del texts
    if scan.nul_removed:
        log.warning("removed NUL characters from the text of %d records (storage cannot hold them)",
                    scan.nul_removed)
    if scan.repeated_hashes:
        # Second look, only when some id repeats: name each duplicate's line.
        for built in valid_records(corpus, spec, scan):
            if isinstance(built, Invalid) and built.reason.startswith("duplicate id"):
                scan.add_invalid(built)
    return scan


class UnknownField(CorpusError):
    """The job names a field that none of the corpus's first records has (a misspelling,
    most often): refused before the model loads or anything is written."""


def check_fields(corpus: Source, spec: FieldSpec, sample: int = FIELD_SAMPLE) -> None:
    """Refuse an id, text or metadata field that none of the first `sample` records has,
    naming the fields they do have (and the nearest one). A columnar source (Parquet)
    refuses a column its schema lacks as it opens; a corpus with no readable record in the
    sample is left to validation, which reports each line."""
    fields = (spec.id_field, *spec.text_fields, *spec.metadata_fields)
    seen: dict[str, None] = {}  # insertion-ordered: the fields as the records list them
    read = readable = 0
    for raw in islice(corpus.records(fields), sample):
        read += 1
        if raw.data is not None:
            readable += 1
            seen.update(dict.fromkeys(str(key) for key in raw.data))
    if not readable:
        return
    roles = [("id field", spec.id_field)] + [("text field", f) for f in spec.text_fields] + \
        [("metadata field", f) for f in spec.metadata_fields]
    missing = []
    for role, name in roles:
        if name not in seen:
            near = difflib.get_close_matches(name, list(seen), n=1)
            missing.append(f"the {role} {name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    if not missing:
        return
    where = f"the first {sample} records" if read == sample else "the records"
    verb = "is" if len(missing) == 1 else "are"
    shown = ", ".join(list(seen)[:30]) + (", ..." if len(seen) > 30 else "")
    raise UnknownField(f"{' and '.join(missing)} {verb} in none of {where} of {corpus.name}; their fields: "
                       f"{shown}. Nothing was sent.")
