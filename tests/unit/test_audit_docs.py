"""docs/audit.md documents every record type the daemon writes, each with an example that
fits the schema."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from aitherfwd import audit_ocsf as ocsf
from aitherfwd import audit_records as ar
from aitherfwd.audit_check import validate_line

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def _examples() -> list[dict[str, object]]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    return [json.loads(b) for b in blocks]


def test_every_record_type_has_a_section_and_an_example() -> None:
    text = DOC.read_text()
    for cls in ar.RECORDS:
        assert f"### `{cls.event}` — {cls.__name__}" in text, cls
    examples = _examples()
    shown = {(e["event"], e["action"]) for e in examples}
    assert {(c.event, c.action) for c in ar.RECORDS} <= shown


def test_every_example_fits_the_schema() -> None:
    for example in _examples():
        line = dict(example)
        if "class_uid" not in line:  # a short example: the OCSF tail is derived
            (cls,) = [
                c
                for c in ar.BY_EVENT[str(line["event"])]
                if c.action == line["action"]
                and [f.name for f in dataclasses.fields(c)]
                == [k for k in line if k not in ar.HEADER]
            ]
            line.update(ar.ocsf_of(cls, line, ocsf.epoch_ms(str(line["timestamp"]))))
        assert validate_line(line) == [], example
