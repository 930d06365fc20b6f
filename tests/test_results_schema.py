"""One parquet schema across partitions: a store holding two sweeps with different hyperparameters, several
datasets and a failed-only partition is read by pandas.read_parquet, pyarrow.dataset and DuckDB (no
`union_by_name`) with every column and its declared type, on local disk and on SeaweedFS."""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from results.collect import collect
from results.parquet import list_parts, read_table, write_rows
from results.schema import record_to_rows
from results.store import open_store
from tests.s3 import s3_server  # noqa: F401
from tests.test_results_records import make_record, write_sweep

# As FairConfig declares them (fair.config.hparam_kinds); records carry them as `hparam_types`.
KINDS = {"train.lr": "float", "local.num_crops": "int", "anchors.mode": "str", "train.fair_momentum": "float",
         "train.compile": "bool", "weighting.power": "float", "weighting.mode": "str",
         "data.train_per_class": "int", "seed": "int"}
EXPECTED = {"hp.train.lr": pa.float64(), "hp.local.num_crops": pa.int64(), "hp.anchors.mode": pa.string(),
            "hp.train.fair_momentum": pa.float64(), "hp.train.compile": pa.bool_(),
            "hp.weighting.power": pa.float64(), "hp.weighting.mode": pa.string(),
            "hp.data.train_per_class": pa.int64(), "hp.seed": pa.int64()}


def declared(record: dict) -> dict:
    record["hparam_types"] = {k: KINDS[k] for k in record["hparams"]}
    return record


def grid_records() -> list[dict]:
    """Sweep `grid`: dtd and eurosat completed; ucf101 failed only, with the auto momentum still null."""
    out = [declared(make_record(dataset=d, sweep="grid", trial=f"g{i}", seed=i,
                                hparams={"train.lr": 1e-4 * (i + 1), "local.num_crops": 8, "anchors.mode": "set",
                                         "train.fair_momentum": 0.9, "train.compile": False}))
           for d in ("dtd", "eurosat") for i in range(2)]
    out += [declared(make_record(dataset="ucf101", sweep="grid", trial=f"u{i}", seed=i, status="failed",
                                 hparams={"train.lr": 1e-3, "local.num_crops": 4, "anchors.mode": "set",
                                          "train.fair_momentum": None, "train.compile": False}))
            for i in range(2)]
    return out


def tpe_records() -> list[dict]:
    """Sweep `tpe`: other hyperparameters (no local.num_crops), an integer value of a float setting and a
    setting that is null in every record of the store."""
    return [declared(make_record(dataset=d, sweep="tpe", trial=f"t{i}", seed=i,
                                 hparams={"train.lr": 3e-4, "weighting.power": 2, "weighting.mode": "margin",
                                          "data.train_per_class": None}))
            for d in ("dtd", "flowers102") for i in range(2)]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def where(request, tmp_path):
    """A fresh store (a folder, or a prefix in SeaweedFS) and the pyarrow filesystem + path that reads it."""
    if request.param == "local":
        uri = str(tmp_path / "out")
        return uri, None, uri
    server = request.getfixturevalue("s3_server")
    uri = f"s3://{server.bucket}/schema-{uuid.uuid4().hex[:8]}"
    fs, path = open_store(uri).pyarrow_filesystem()
    return uri, fs, path


def part_schemas(fs, path: str, table: str = "trials") -> list[pa.Schema]:
    dataset = ds.dataset(f"{path}/{table}", filesystem=fs, format="parquet")
    return [pq.read_schema(f, filesystem=dataset.filesystem) for f in dataset.files]


def duckdb_connection(fs):
    """DuckDB, reading S3 through pyarrow's filesystem (its httpfs extension is not installed offline)."""
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    if fs is not None:
        from fsspec.implementations.arrow import ArrowFSWrapper

        class SeaweedFS(ArrowFSWrapper):
            protocol = "seaweed"

            @classmethod
            def _strip_protocol(cls, path):     # keep the bucket: the wrapper's own would drop it as a host
                return path.split("://", 1)[-1]

        con.register_filesystem(SeaweedFS(fs))
    return con


def check_readers(fs, path: str, n_rows: int) -> None:
    """Every reader sees every row and every hyperparameter column, with its declared type."""
    import pandas as pd

    schemas = part_schemas(fs, path)
    assert len(schemas) == 5 and all(s.equals(schemas[0]) for s in schemas)      # one schema, every part

    t = ds.dataset(f"{path}/trials", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert t.num_rows == n_rows
    assert {n: t.schema.field(n).type for n in t.column_names if n.startswith("hp.")} == EXPECTED

    df = pd.read_parquet(f"{path}/trials", filesystem=fs)
    assert len(df) == n_rows and set(EXPECTED) <= set(df.columns)
    typed = pd.read_parquet(f"{path}/trials", filesystem=fs, dtype_backend="pyarrow")
    assert {n: typed[n].dtype.pyarrow_dtype for n in EXPECTED} == EXPECTED
    df = df.set_index(["sweep", "dataset", "trial_id"]).sort_index()
    assert pd.isna(df.loc[("grid", "ucf101", "u0"), "hp.train.fair_momentum"])
    assert pd.isna(df.loc[("grid", "dtd", "g0"), "hp.weighting.mode"])
    assert df.loc[("grid", "dtd", "g1"), "hp.local.num_crops"] == 8
    assert df.loc[("tpe", "dtd", "t0"), "hp.weighting.power"] == 2.0

    con = duckdb_connection(fs)
    glob = f"{path}/trials/**/*.parquet" if fs is None else f"seaweed://{path}/trials/**/*.parquet"
    rel = con.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)")
    duck = dict(zip(rel.columns, map(str, rel.types)))
    assert {n: duck[n] for n in EXPECTED} == {
        "hp.train.lr": "DOUBLE", "hp.local.num_crops": "BIGINT", "hp.anchors.mode": "VARCHAR",
        "hp.train.fair_momentum": "DOUBLE", "hp.train.compile": "BOOLEAN", "hp.weighting.power": "DOUBLE",
        "hp.weighting.mode": "VARCHAR", "hp.data.train_per_class": "BIGINT", "hp.seed": "BIGINT"}
    counts = con.sql(f"select sweep, dataset, count(*), count(\"hp.local.num_crops\"), "
                     f"count(\"hp.weighting.power\") from read_parquet('{glob}', hive_partitioning=true) "
                     "group by all order by all").fetchall()
    assert counts == [("grid", "dtd", 2, 2, 0), ("grid", "eurosat", 2, 2, 0), ("grid", "ucf101", 2, 2, 0),
                      ("tpe", "dtd", 2, 0, 2), ("tpe", "flowers102", 2, 0, 2)]


def test_every_reader_reads_a_store_of_several_sweeps(where, tmp_path):
    uri, fs, path = where
    collect([str(write_sweep(tmp_path / "sweeps", grid_records() + tpe_records()))], uri)
    check_readers(fs, path, 10)


def test_a_later_collect_with_new_columns_rewrites_the_older_parts(where, tmp_path):
    uri, fs, path = where
    collect([str(write_sweep(tmp_path / "grid", grid_records()))], uri)
    before = {p for ps in list_parts(open_store(uri), "trials").values() for p in ps}
    collect([str(write_sweep(tmp_path / "tpe", tpe_records()))], uri)
    parts = list_parts(open_store(uri), "trials")
    assert not before & {p for ps in parts.values() for p in ps}    # grid's parts gained tpe's columns
    assert all(len(ps) == 1 for ps in parts.values())
    check_readers(fs, path, 10)
    again = collect([str(tmp_path / "grid"), str(tmp_path / "tpe")], uri)   # nothing new: nothing changes
    assert again["records"] == 10 and list_parts(open_store(uri), "trials") == parts


def test_a_store_written_with_per_partition_types_is_unified_by_the_next_collect(tmp_path):
    """Parts written before the tables shared a schema (each partition typed by its own values, columns of
    other sweeps missing) are rewritten by the next collect; no row is lost."""
    store = open_store(str(tmp_path / "out"))
    for rec in grid_records() + tpe_records():
        rec.pop("hparam_types")
        if rec["dataset"] == "flowers102":
            rec["hparams"]["weighting.power"] = 2.5
        rows = record_to_rows(rec, "old")
        write_rows(store, "trials", rows.sweep, rows.dataset, [rows.trial])    # no shared types: as before
    old = part_schemas(None, str(tmp_path / "out"))
    assert len({tuple(s.names) for s in old}) > 1
    assert pq.read_schema(next((tmp_path / "out/trials/sweep=tpe/dataset=dtd").iterdir())).field(
        "hp.weighting.power").type == pa.int64()
    collect([str(write_sweep(tmp_path / "sweeps", grid_records()[:1]))], str(tmp_path / "out"))
    schemas = part_schemas(None, str(tmp_path / "out"))
    assert all(s.equals(schemas[0]) for s in schemas)
    assert schemas[0].field("hp.weighting.power").type == pa.float64()       # int and float: float64
    assert schemas[0].field("hp.data.train_per_class").type == pa.null()     # never a value, never declared
    assert read_table(store, "trials").num_rows == 10


def test_declared_type_wins_over_the_values_and_a_misfit_value_keeps_its_own():
    rec = declared(make_record(hparams={"weighting.power": 2, "train.fair_momentum": None, "seed": 0}))
    assert record_to_rows(rec, "r").hp_types == {"hp.weighting.power": pa.float64(),
                                                 "hp.train.fair_momentum": pa.float64(), "hp.seed": pa.int64()}
    rec["hparams"]["weighting.power"] = "high"       # a refused config of a failed trial may hold anything
    assert record_to_rows(rec, "r").hp_types["hp.weighting.power"] == pa.string()
    rec.pop("hparam_types")                          # older records: the values decide, null has no type
    assert record_to_rows(rec, "r").hp_types["hp.train.fair_momentum"] == pa.null()
