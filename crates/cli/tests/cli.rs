//! End-to-end tests of the `offheap` binary: real processes on real files in a temp dir.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn offheap(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_offheap"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn offheap");
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(b) = stdin {
            i.write_all(b).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic output for {args:?}: {err}"
    );
    out
}

fn ok(args: &[&str]) -> String {
    let o = offheap(args, None);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail with exit status 1 and one `offheap: error:` line.
fn fails(args: &[&str]) -> String {
    let o = offheap(args, None);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.starts_with("offheap: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
#[cfg_attr(miri, ignore)]
fn put_get_del_stats_check() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("m.map");
    let f = s(&f);
    ok(&["put", f, "hello", "world"]);
    ok(&["put", f, "hello", "again"]);
    ok(&["put", "--hex", f, "00ff", "0a0b0c"]);
    assert_eq!(ok(&["get", f, "hello"]), "again\n");
    assert_eq!(ok(&["get", "--hex", f, "00ff"]), "0a0b0c\n");
    let e = fails(&["get", f, "missing"]);
    assert!(e.contains("key not found: missing"), "{e}");
    let stats = ok(&["stats", f]);
    assert!(stats.contains("entries          2\n"), "{stats}");
    assert!(stats.contains("shards           256\n"), "{stats}");
    let j: serde_json::Value = serde_json::from_str(&ok(&["stats", "--json", f])).unwrap();
    assert_eq!(j["entries"], 2);
    assert!(j["file_bytes"].as_u64().unwrap() >= j["in_use_bytes"].as_u64().unwrap());
    assert!(ok(&["check", f]).contains("ok (2 entries in 256 shards"));
    ok(&["del", f, "hello"]);
    fails(&["del", f, "hello"]);
    fails(&["get", f, "hello"]);
    assert_eq!(ok(&["get", "--hex", f, "00FF"]), "0a0b0c\n");
    let e = fails(&["get", "--hex", f, "0g"]);
    assert!(e.contains("not valid hex"), "{e}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn missing_and_foreign_files_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let none = d.path().join("none.map");
    for cmd in ["stats", "check", "dump"] {
        let e = fails(&[cmd, s(&none)]);
        assert!(e.contains("none.map") && e.contains("No such file"), "{e}");
    }
    let e = fails(&["get", s(&none), "k"]);
    assert!(e.contains("No such file"), "{e}");
    let foreign = d.path().join("foreign.txt");
    std::fs::write(&foreign, vec![b'x'; 100_000]).unwrap();
    for cmd in ["stats", "check", "dump"] {
        let e = fails(&[cmd, s(&foreign)]);
        assert!(e.contains("cannot open as an offheap map file"), "{e}");
    }
    let e = fails(&["check", s(d.path())]);
    assert!(e.contains("not a regular file"), "{e}");
    // Usage errors: one line, exit status 2.
    let o = offheap(&["frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.starts_with("offheap: error: ") && err.lines().count() == 1,
        "{err}"
    );
}

fn tricky_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = (0..3000u32)
        .map(|i| {
            (
                format!("key{i}").into_bytes(),
                format!("value {i}").into_bytes(),
            )
        })
        .collect();
    v.push((b"tab\tkey".to_vec(), b"line\nbreak\\".to_vec()));
    v.push(((0..=255u8).collect(), vec![0, 1, 2, 255]));
    v.push(("caf\u{e9}".as_bytes().to_vec(), vec![]));
    v.push((vec![0xff; 40], vec![7; 5000]));
    v
}

fn sorted_dump(f: &str, json: bool) -> Vec<u8> {
    let out = if json {
        ok(&["dump", "--json", f])
    } else {
        ok(&["dump", f])
    };
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    lines.join("\n").into_bytes()
}

#[test]
#[cfg_attr(miri, ignore)]
fn dump_load_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.map");
    let pairs = tricky_pairs();
    let mut text = String::new();
    for (k, v) in &pairs {
        text += &offheap_cli::codec::format_line(k, v);
        text.push('\n');
    }
    let o = offheap(&["load", s(&a)], Some(text.as_bytes()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("loaded {} pairs", pairs.len())));
    for (k, v) in &pairs[pairs.len() - 4..] {
        let got = ok(&["get", "--hex", s(&a), &offheap_cli::codec::to_hex(k)]);
        assert_eq!(got.trim_end(), offheap_cli::codec::to_hex(v));
    }
    // Text: dump a, load into b, dump b: the same lines.
    let b = d.path().join("b.map");
    let dump_a = ok(&["dump", s(&a)]);
    assert_eq!(dump_a.lines().count(), pairs.len());
    let o = offheap(&["load", s(&b)], Some(dump_a.as_bytes()));
    assert!(o.status.success());
    assert_eq!(sorted_dump(s(&a), false), sorted_dump(s(&b), false));
    // JSON lines through files (--output / --input).
    let j = d.path().join("a.jsonl");
    ok(&["dump", "--json", s(&a), "--output", s(&j)]);
    let c = d.path().join("c.map");
    ok(&["load", "--json", s(&c), "--input", s(&j)]);
    assert_eq!(sorted_dump(s(&a), true), sorted_dump(s(&c), true));
    assert_eq!(sorted_dump(s(&a), false), sorted_dump(s(&c), false));
    ok(&["check", s(&c)]);
    // A bad line is an error naming the line.
    let o = offheap(&["load", s(&c)], Some(b"good\tline\nno tab here\n"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("stdin: line 2: no tab"), "{err}");
}

/// Writes a copy of the map file `bytes` into `dir` for each 8-aligned u64 in it equal to
/// the count `n`, with `n + 1` there, and runs `check` on each: the errors of those that
/// failed, each required to be one "corrupt" line.
fn failed_checks_of_changed_counts(dir: &Path, bytes: &[u8], n: u64) -> Vec<String> {
    let at = find_u64(bytes, n);
    assert!(!at.is_empty(), "no u64 {n} in the file");
    let mut errors = Vec::new();
    for i in at {
        let mut b = bytes.to_vec();
        b[i..i + 8].copy_from_slice(&(n + 1).to_le_bytes());
        let f = dir.join(format!("len{i}.map"));
        std::fs::write(&f, &b).unwrap();
        let o = offheap(&["check", s(&f)], None);
        if !o.status.success() {
            let err = String::from_utf8(o.stderr).unwrap();
            assert!(
                err.starts_with("offheap: error: ") && err.contains("corrupt"),
                "{err}"
            );
            errors.push(err);
        }
    }
    errors
}

/// Offsets of every 8-aligned little-endian u64 equal to `n` in `b`.
fn find_u64(b: &[u8], n: u64) -> Vec<usize> {
    (0..b.len() / 8)
        .map(|i| i * 8)
        .filter(|&i| b[i..i + 8] == n.to_le_bytes())
        .collect()
}

#[test]
#[cfg_attr(miri, ignore)]
fn check_catches_corruption() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.map");
    let n = 777u64;
    let text: String = (0..n).map(|i| format!("key{i}\tvalue{i}\n")).collect();
    let o = offheap(&["load", "--shards", "1", s(&good)], Some(text.as_bytes()));
    assert!(o.status.success());
    ok(&["check", s(&good)]);
    let bytes = std::fs::read(&good).unwrap();

    // 1. A flipped byte in the region header: the file no longer opens.
    let bad = d.path().join("header.map");
    let mut b = bytes.clone();
    b[20] ^= 0xff;
    std::fs::write(&bad, &b).unwrap();
    let e = fails(&["check", s(&bad)]);
    assert!(e.contains("cannot open") && e.contains("checksum"), "{e}");

    // 2. The shard's entry count changed (found as the u64 777 in the file, wherever the
    //    layout puts it): the file opens, check finds that the table disagrees.
    let caught = failed_checks_of_changed_counts(d.path(), &bytes, n);
    assert!(!caught.is_empty(), "no corrupted count was caught");

    // 3. A truncated file.
    let cut = d.path().join("cut.map");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = fails(&["check", s(&cut)]);
    assert!(e.contains("cannot open"), "{e}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn bench_text_at_tiny_size() {
    let d = tempfile::tempdir().unwrap();
    let out = ok(&["bench", "--keys", "20000", "--dir", s(d.path())]);
    for p in ["PUT", "UPD", "MIX", "GET"] {
        assert!(
            out.lines().any(|l| l.starts_with(p) && l.contains('.')),
            "no {p} row: {out}"
        );
    }
    assert!(out.contains("memory: 20000 pairs"), "{out}");
    // The shape differs from SharedHashFile's test: no ratio column.
    assert!(!out.contains("SharedHashFile"), "{out}");
    // The file was removed.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
#[cfg_attr(miri, ignore)]
fn bench_json_counts_and_keep() {
    bench_json(1);
}

#[test]
#[cfg_attr(miri, ignore)]
fn bench_json_batched() {
    bench_json(100);
}

/// A JSON bench run of an odd shape (3 workers, long keys and values, 50 % gets) with the
/// given `--batch`: every count, and the kept file holds every key.
fn bench_json(batch: usize) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("kept.map");
    let batch_arg = batch.to_string();
    let out = ok(&[
        "bench",
        "--batch",
        &batch_arg,
        "--json",
        "--keys",
        "30001",
        "--procs",
        "3",
        "--key-size",
        "12",
        "--value-size",
        "9",
        "--mix-get-percent",
        "50",
        "--shards",
        "16",
        "--file",
        s(&f),
        "--keep",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let r = lines.last().unwrap();
    assert_eq!(r["type"], "result");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["type"] == "tick"));
    assert_eq!(r["pairs"], 30001);
    assert_eq!(r["procs"], 3);
    assert_eq!(r["shards"], 16);
    assert_eq!(r["batch"], batch);
    assert_eq!(r["matches_shf"], false);
    let phases = r["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["PUT", "UPD", "MIX", "GET"]);
    for p in phases {
        assert!(p["mops"].as_f64().unwrap() > 0.0);
        assert_eq!(p["worker_seconds"].as_array().unwrap().len(), 3);
    }
    assert_eq!(phases[0]["ops"], 30001);
    assert_eq!(phases[1]["ops"], 30001);
    assert_eq!(phases[3]["ops"], 30001);
    // MIX: one op per get, two per delete + put: between n and 2n.
    let mix = phases[2]["ops"].as_u64().unwrap();
    assert!(
        (30001..=60002).contains(&mix) && mix > 30001 + 5000,
        "{mix}"
    );
    assert!(
        r["file_bytes_per_pair"].as_f64().unwrap() >= r["in_use_bytes_per_pair"].as_f64().unwrap()
    );
    // The kept file is a valid map with every key, the UPD values (or MIX's re-puts).
    ok(&["check", s(&f)]);
    let st: serde_json::Value = serde_json::from_str(&ok(&["stats", "--json", s(&f)])).unwrap();
    assert_eq!(st["entries"], 30001);
    assert_eq!(st["shards"], 16);
    // An existing file is refused.
    let e = fails(&["bench", "--keys", "100", "--file", s(&f)]);
    assert!(e.contains("already exists"), "{e}");
    // A bad shape is refused before anything starts.
    let e = fails(&["bench", "--keys", "70000", "--key-size", "2"]);
    assert!(e.contains("do not fit"), "{e}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn bytes_map_files() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("b.map");
    let f = s(&f);
    ok(&["put", "--kind", "bytes", f, "hello", "world"]);
    ok(&["put", f, "a key longer than seven bytes", &"v".repeat(3000)]);
    ok(&["put", "--kind", "bytes", "--hex", f, "00ff", "0a0b0c"]);
    assert_eq!(ok(&["get", f, "hello"]), "world\n");
    assert_eq!(ok(&["get", "--hex", f, "00ff"]), "0a0b0c\n");
    assert_eq!(
        ok(&["get", f, "a key longer than seven bytes"]),
        "v".repeat(3000) + "\n"
    );
    let stats = ok(&["stats", f]);
    assert!(stats.contains("map              BytesMap\n"), "{stats}");
    assert!(stats.contains("entries          3\n"), "{stats}");
    assert!(
        !stats.contains("shards") && !stats.contains("recoveries"),
        "{stats}"
    );
    let j: serde_json::Value = serde_json::from_str(&ok(&["stats", "--json", f])).unwrap();
    assert_eq!(
        (j["kind"].as_str(), j["entries"].as_u64()),
        (Some("bytes"), Some(3))
    );
    assert!(j["shards"].is_null() && j["recoveries"].is_null(), "{j}");
    assert!(ok(&["check", f]).contains("ok (3 entries in a BytesMap"));
    ok(&["del", f, "hello"]);
    fails(&["del", f, "hello"]);
    let e = fails(&["get", f, "hello"]);
    assert!(e.contains("key not found"), "{e}");

    // The kind asked for must be the file's; --shards is for SharedMap files.
    let e = fails(&["put", "--kind", "shared", f, "k", "v"]);
    assert!(e.contains("holds a BytesMap, not a SharedMap"), "{e}");
    let shared = d.path().join("s.map");
    ok(&["put", s(&shared), "k", "v"]);
    assert!(ok(&["stats", s(&shared)]).contains("map              SharedMap\n"));
    let e = fails(&["put", "--kind", "bytes", s(&shared), "k", "v"]);
    assert!(e.contains("holds a SharedMap, not a BytesMap"), "{e}");
    let e = fails(&[
        "put",
        "--kind",
        "bytes",
        "--shards",
        "4",
        s(&d.path().join("x.map")),
        "k",
        "v",
    ]);
    assert!(e.contains("--shards applies to SharedMap files"), "{e}");
    assert!(!d.path().join("x.map").exists());

    // Every tricky pair through a BytesMap: load, dump, and the same lines as a SharedMap's.
    let pairs = tricky_pairs();
    let mut text = String::new();
    for (k, v) in &pairs {
        text += &offheap_cli::codec::format_line(k, v);
        text.push('\n');
    }
    let (bm, sm) = (d.path().join("lb.map"), d.path().join("ls.map"));
    for (m, kind) in [(&bm, "bytes"), (&sm, "shared")] {
        let o = offheap(&["load", "--kind", kind, s(m)], Some(text.as_bytes()));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(sorted_dump(s(&bm), false), sorted_dump(s(&sm), false));
    assert_eq!(sorted_dump(s(&bm), true), sorted_dump(s(&sm), true));
    ok(&["check", s(&bm)]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn check_catches_a_bytes_map_whose_length_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.map");
    let n = 777u64;
    let text: String = (0..n)
        .map(|i| format!("key number {i}\tvalue{i}\n"))
        .collect();
    let o = offheap(
        &["load", "--kind", "bytes", s(&good)],
        Some(text.as_bytes()),
    );
    assert!(o.status.success());
    ok(&["check", s(&good)]);
    let bytes = std::fs::read(&good).unwrap();
    // The map's length changed (found as the u64 777, wherever the layout puts it): the
    // file opens, and check finds that the pairs do not add up to it.
    let caught = failed_checks_of_changed_counts(d.path(), &bytes, n);
    assert!(
        caught
            .iter()
            .any(|e| e.contains("fewer pairs than the map's length")),
        "no changed length was caught as one: {caught:?}"
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_typed_map_file_is_named_as_one() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("typed.map");
    let mut m = offheap::Map::<u64, u64>::create(&f).unwrap();
    m.insert(1, 2).unwrap();
    drop(m);
    for cmd in [
        &["stats", s(&f)][..],
        &["check", s(&f)],
        &["get", s(&f), "k"],
    ] {
        let e = fails(cmd);
        assert!(e.contains("a typed offheap::Map file"), "{e}");
    }
    let e = fails(&["put", s(&f), "k", "v"]);
    assert!(e.contains("a typed offheap::Map file"), "{e}");
}
