"""The benchmark harness's own parsing (the harness itself is run by hand: it prints figures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl_devtools import bench


def test_ab_settings_parse_and_refuse_what_is_not_an_etl_setting() -> None:
    assert bench._env_pairs("") == {}
    assert bench._env_pairs("ETL_DECODE_ON_LOOP_MAX_BYTES=0, ETL_CONCURRENCY=16") == {
        "ETL_DECODE_ON_LOOP_MAX_BYTES": "0", "ETL_CONCURRENCY": "16"}
    assert bench._env_pairs("ETL_OTLP_ENDPOINT=") == {"ETL_OTLP_ENDPOINT": ""}
    for bad in ("ETL_CONCURRENCY", "PATH=/tmp", "concurrency=16"):
        with pytest.raises(SystemExit, match="is not ETL_NAME=value"):
            bench._env_pairs(bad)


def test_instruction_count_is_read_from_the_summary_line(tmp_path: Path) -> None:
    out = tmp_path / "cachegrind.out"
    out.write_text("desc: I1 cache: ...\ncmd: python\nevents: Ir\nfl=x.c\n1 5\nsummary: 1234567\n")
    assert bench._ir_summary(out) == 1234567
    out.write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no summary line"):
        bench._ir_summary(out)


def test_decode_modes() -> None:
    assert bench.decode_env("1") == {"ETL_DECODE_PROCESSES": "1"}
    assert bench.decode_env("2c") == {"ETL_DECODE_PROCESSES": "2",
                                      "ETL_DECODE_INLINE_MAX_BYTES": "0"}
    with pytest.raises(SystemExit):
        bench._decode_mode("0c")
