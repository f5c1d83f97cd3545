//! The SharedHashFile workload on one [`SharedMap`] file, run by real worker processes.
//!
//! P workers, each on its own key range (`id * keys / P .. (id + 1) * keys / P`), run four
//! phases separated by a barrier (the parent starts a phase only when every worker has
//! finished the previous one):
//!
//! * **PUT**: insert every key of the range (unique keys);
//! * **UPD**: update every key with a value of the same size;
//! * **MIX**: as many random keys of the range as it holds: `mix_get_percent` % gets, the
//!   rest a delete and a put (two operations);
//! * **GET**: get every key (each must be found, with a value of the right size).
//!
//! A phase's throughput is all workers' operations over the slowest worker's time.
//!
//! The parent ([`run`]) creates the file and spawns the workers with a caller-given command
//! (the `offheap` binary re-executes itself with a hidden `worker` subcommand); a worker
//! ([`run_worker`]) talks to the parent over its stdin and stdout: the parent writes a
//! `g` line to start a phase, the worker writes `p OPS` progress lines (a few per second)
//! and `d OPS NANOS` when it has finished the phase.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use offheap::{SharedMap, SharedMapOptions};

/// The four phases, in order.
pub const PHASES: [&str; 4] = ["PUT", "UPD", "MIX", "GET"];

/// SharedHashFile's published throughput per phase (M ops/s) for its own test at
/// 2 processes, 10 000 000 keys, 4-byte keys and values, 98 % gets in the mix.
pub const SHF_MOPS: [f64; 4] = [2.32, 4.49, 4.40, 4.54];

/// SharedHashFile's published memory use for the same test: bytes per pair.
pub const SHF_BYTES_PER_PAIR: f64 = 45.7;

/// The shape of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Worker processes.
    pub procs: usize,
    /// Keys in total (split evenly between the workers).
    pub keys: u64,
    /// Bytes per key (at least 1; keys longer than 8 bytes are padded deterministically).
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Percentage of gets in the MIX phase (the rest are delete + put).
    pub mix_get_percent: u32,
    /// Shards of the map (a power of two).
    pub shards: usize,
    /// Operations per call: 1 uses the one-key API (`put`, `get_with`, `delete`), as
    /// SharedHashFile's test does; more uses the batched API (`put_many`,
    /// `get_many_with`, `delete_many`) with groups of this many keys.
    pub batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            procs: 2,
            keys: 10_000_000,
            key_size: 4,
            value_size: 4,
            mix_get_percent: 98,
            shards: 256,
            batch: 1,
        }
    }
}

/// Largest key or value size the workload accepts (1 MiB).
pub const MAX_SIZE: usize = 1 << 20;

/// Largest `--batch`.
pub const MAX_BATCH: usize = 1 << 20;

impl Config {
    /// Checks the shape; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.procs == 0 || self.procs > 1024 {
            return Err(format!("--procs must be 1 to 1024, not {}", self.procs));
        }
        if self.keys < self.procs as u64 {
            return Err(format!(
                "--keys ({}) must be at least --procs ({})",
                self.keys, self.procs
            ));
        }
        if self.key_size == 0 || self.key_size > MAX_SIZE {
            return Err(format!("--key-size must be 1 to {MAX_SIZE}"));
        }
        if self.value_size > MAX_SIZE {
            return Err(format!("--value-size must be at most {MAX_SIZE}"));
        }
        let id_bytes = self.key_size.min(8) as u32;
        if id_bytes < 8 && self.keys > 1u64 << (8 * id_bytes) {
            return Err(format!(
                "{} keys do not fit in {}-byte keys (at most {})",
                self.keys,
                self.key_size,
                1u64 << (8 * id_bytes)
            ));
        }
        if self.mix_get_percent > 100 {
            return Err("--mix-get-percent must be 0 to 100".into());
        }
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err("--shards must be a power of two up to 65536".into());
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(format!("--batch must be 1 to {MAX_BATCH}"));
        }
        Ok(())
    }

    /// Whether the run has the shape of SharedHashFile's published test (so the ratios
    /// against [`SHF_MOPS`] mean something).
    pub fn matches_shf(&self) -> bool {
        self.procs == 2
            && self.keys == 10_000_000
            && self.key_size == 4
            && self.value_size == 4
            && self.mix_get_percent == 98
    }

    /// Worker `id`'s key range.
    pub fn range(&self, id: usize) -> (u64, u64) {
        let f = |i: usize| (self.keys as u128 * i as u128 / self.procs as u128) as u64;
        (f(id), f(id + 1))
    }

    /// The arguments that describe this shape to a worker (see [`Config::from_worker_args`]).
    pub fn worker_args(&self) -> Vec<String> {
        vec![
            self.procs.to_string(),
            self.keys.to_string(),
            self.key_size.to_string(),
            self.value_size.to_string(),
            self.mix_get_percent.to_string(),
            self.shards.to_string(),
            self.batch.to_string(),
        ]
    }

    /// Reads back [`Config::worker_args`].
    pub fn from_worker_args(a: &[String]) -> Result<Config, String> {
        let n = |i: usize| -> Result<u64, String> {
            a.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("worker argument {i} missing or not a number"))
        };
        let c = Config {
            procs: n(0)? as usize,
            keys: n(1)?,
            key_size: n(2)? as usize,
            value_size: n(3)? as usize,
            mix_get_percent: n(4)? as u32,
            shards: n(5)? as usize,
            batch: n(6)? as usize,
        };
        c.validate()?;
        Ok(c)
    }
}

/// Writes key number `k` into `buf` (of the key size): its little-endian bytes, then a
/// fixed padding pattern. Distinct numbers give distinct keys (given [`Config::validate`]).
pub fn fill_key(buf: &mut [u8], k: u64) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&k.to_le_bytes()[..n]);
}

/// A buffer of `size` bytes with the padding pattern (`fill_key` / `fill_value` then write
/// only the first 8 bytes of each key or value).
pub fn padded(size: usize) -> Vec<u8> {
    (0..size)
        .map(|j| (j as u8).wrapping_mul(31) ^ 0x5A)
        .collect()
}

/// Writes value `v` into `buf` (of the value size): its little-endian bytes (as many as
/// fit), after the padding pattern.
pub fn fill_value(buf: &mut [u8], v: u64) {
    fill_key(buf, v);
}

/// An error of the workload, as one line for the user.
#[derive(Debug)]
pub struct WorkloadError(pub String);

impl std::fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WorkloadError {}

impl From<offheap::Error> for WorkloadError {
    fn from(e: offheap::Error) -> Self {
        WorkloadError(e.to_string())
    }
}

impl From<std::io::Error> for WorkloadError {
    fn from(e: std::io::Error) -> Self {
        WorkloadError(e.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, WorkloadError> {
    Err(WorkloadError(msg.into()))
}

/// How often a worker reports its progress.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Counts operations and writes progress lines at most every [`REPORT_EVERY`].
struct Progress<'a, W: Write> {
    out: &'a mut W,
    ops: u64,
    last: Instant,
}

impl<W: Write> Progress<'_, W> {
    #[inline]
    fn add(&mut self, n: u64) -> std::io::Result<()> {
        self.ops += n;
        if self.ops % 4096 < n && self.last.elapsed() >= REPORT_EVERY {
            self.last = Instant::now();
            writeln!(self.out, "p {}", self.ops)?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// The worker side: opens the map at `path` and runs the phases for worker `id`, each when
/// a `g` line arrives on `input`, reporting on `out`.
pub fn run_worker(
    cfg: &Config,
    path: &Path,
    id: usize,
    mut input: impl BufRead,
    mut out: impl Write,
) -> Result<(), WorkloadError> {
    cfg.validate().map_err(WorkloadError)?;
    if id >= cfg.procs {
        return fail(format!("worker id {id} out of range"));
    }
    let m = SharedMap::open(path).map_err(|e| WorkloadError(format!("{}: {e}", path.display())))?;
    let (lo, hi) = cfg.range(id);
    let mut key = padded(cfg.key_size);
    let mut val = padded(cfg.value_size);
    let mut line = String::new();
    for phase in PHASES {
        line.clear();
        if input.read_line(&mut line)? == 0 || line.trim() != "g" {
            return fail(format!("worker {id}: no start signal for {phase}"));
        }
        let t = Instant::now();
        let mut p = Progress {
            out: &mut out,
            ops: 0,
            last: t,
        };
        if cfg.batch > 1 {
            batched_phase(&m, cfg, phase, id, (lo, hi), &mut p)?;
        } else {
            match phase {
                "PUT" | "UPD" => {
                    let flip = if phase == "UPD" { u64::MAX } else { 0 };
                    for k in lo..hi {
                        fill_key(&mut key, k);
                        fill_value(&mut val, k ^ flip);
                        m.put(&key, &val)?;
                        p.add(1)?;
                    }
                }
                "MIX" => {
                    let mut x = mix_seed(id);
                    let span = hi - lo;
                    for _ in lo..hi {
                        xorshift(&mut x);
                        let k = lo + x % span;
                        fill_key(&mut key, k);
                        if (x >> 32) % 100 < cfg.mix_get_percent as u64 {
                            std::hint::black_box(m.get_with(&key, |v| v.len())?);
                            p.add(1)?;
                        } else {
                            m.delete(&key)?;
                            fill_value(&mut val, k);
                            m.put(&key, &val)?;
                            p.add(2)?;
                        }
                    }
                }
                _ => {
                    let (mut found, mut wrong) = (0u64, 0u64);
                    for k in lo..hi {
                        fill_key(&mut key, k);
                        if let Some(n) = m.get_with(&key, |v| v.len())? {
                            found += 1;
                            wrong += (n != cfg.value_size) as u64;
                        }
                        p.add(1)?;
                    }
                    check_found(id, found, wrong, hi - lo)?;
                }
            }
        }
        let (ops, ns) = (p.ops, t.elapsed().as_nanos());
        writeln!(out, "d {ops} {ns}")?;
        out.flush()?;
    }
    Ok(())
}

/// The xorshift step of the MIX phase's key choice.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The MIX phase's generator seed for worker `id`.
fn mix_seed(id: usize) -> u64 {
    0x2545_F491_4F6C_DD1Du64 ^ id as u64
}

fn check_found(id: usize, found: u64, wrong: u64, want: u64) -> Result<(), WorkloadError> {
    if found != want || wrong != 0 {
        return fail(format!(
            "worker {id}: GET found {found} of {want} keys, {wrong} with a value of the wrong size"
        ));
    }
    Ok(())
}

/// One phase through the batched API: the same operations on the same keys as the one-key
/// loop, `cfg.batch` at a time (in MIX, a group's gets go first, then its delete + puts).
fn batched_phase(
    m: &SharedMap,
    cfg: &Config,
    phase: &str,
    id: usize,
    (lo, hi): (u64, u64),
    p: &mut Progress<'_, impl Write>,
) -> Result<(), WorkloadError> {
    let b = cfg.batch;
    let mut keys = vec![padded(cfg.key_size); b];
    let mut dels = keys.clone();
    let mut pairs = vec![(padded(cfg.key_size), padded(cfg.value_size)); b];
    let mut k = lo;
    match phase {
        "PUT" | "UPD" => {
            let flip = if phase == "UPD" { u64::MAX } else { 0 };
            while k < hi {
                let n = (hi - k).min(b as u64) as usize;
                for (j, (key, val)) in pairs[..n].iter_mut().enumerate() {
                    fill_key(key, k + j as u64);
                    fill_value(val, (k + j as u64) ^ flip);
                }
                m.put_many(&pairs[..n])?;
                p.add(n as u64)?;
                k += n as u64;
            }
        }
        "MIX" => {
            let mut x = mix_seed(id);
            let span = hi - lo;
            while k < hi {
                let n = (hi - k).min(b as u64) as usize;
                let (mut g, mut d) = (0, 0);
                for _ in 0..n {
                    let r = xorshift(&mut x);
                    let key = lo + r % span;
                    if (r >> 32) % 100 < cfg.mix_get_percent as u64 {
                        fill_key(&mut keys[g], key);
                        g += 1;
                    } else {
                        fill_key(&mut dels[d], key);
                        fill_key(&mut pairs[d].0, key);
                        fill_value(&mut pairs[d].1, key);
                        d += 1;
                    }
                }
                m.get_many_with(&keys[..g], |_, v| {
                    std::hint::black_box(v.map(<[u8]>::len));
                })?;
                m.delete_many(&dels[..d])?;
                m.put_many(&pairs[..d])?;
                p.add((n + d) as u64)?;
                k += n as u64;
            }
        }
        _ => {
            let (mut found, mut wrong) = (0u64, 0u64);
            while k < hi {
                let n = (hi - k).min(b as u64) as usize;
                for (j, key) in keys[..n].iter_mut().enumerate() {
                    fill_key(key, k + j as u64);
                }
                m.get_many_with(&keys[..n], |_, v| {
                    if let Some(v) = v {
                        found += 1;
                        wrong += u64::from(v.len() != cfg.value_size);
                    }
                })?;
                p.add(n as u64)?;
                k += n as u64;
            }
            check_found(id, found, wrong, hi - lo)?;
        }
    }
    Ok(())
}

/// Once a second during a phase: what each worker did since the last tick.
#[derive(Clone, Debug)]
pub struct Tick {
    /// Phase name.
    pub phase: &'static str,
    /// Seconds since the start of the phase.
    pub elapsed: f64,
    /// Operations per second of each worker since the previous tick.
    pub per_worker: Vec<f64>,
    /// Their sum.
    pub total: f64,
    /// The map file's size in bytes.
    pub file_bytes: u64,
    /// Region bytes in allocated blocks.
    pub in_use: u64,
}

/// One phase's result.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// Phase name.
    pub phase: &'static str,
    /// Operations of all workers.
    pub ops: u64,
    /// The slowest worker's time in seconds.
    pub seconds: f64,
    /// Each worker's time in seconds.
    pub worker_seconds: Vec<f64>,
}

impl PhaseResult {
    /// Millions of operations per second (all workers, slowest worker's time).
    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.seconds / 1e6
    }

    /// Nanoseconds per operation of the whole run (the inverse of the throughput).
    pub fn ns_per_op(&self) -> f64 {
        self.seconds * 1e9 / self.ops as f64
    }
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The shape.
    pub config: Config,
    /// Per phase, in order.
    pub phases: Vec<PhaseResult>,
    /// Pairs in the map at the end.
    pub pairs: u64,
    /// File size in bytes at the end.
    pub file_bytes: u64,
    /// Region bytes in allocated blocks at the end.
    pub in_use: u64,
}

impl Report {
    /// The whole report as one JSON object (the format `offheap bench --json` prints last).
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.config;
        let shf = c.matches_shf();
        let phases: Vec<serde_json::Value> = self
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::json!({
                    "phase": p.phase,
                    "ops": p.ops,
                    "seconds": p.seconds,
                    "worker_seconds": p.worker_seconds,
                    "mops": p.mops(),
                    "ns_per_op": p.ns_per_op(),
                    "shf_mops": if shf { Some(SHF_MOPS[i]) } else { None },
                    "ratio_vs_shf": if shf { Some(p.mops() / SHF_MOPS[i]) } else { None },
                })
            })
            .collect();
        let per = |b: u64| b as f64 / self.pairs.max(1) as f64;
        serde_json::json!({
            "type": "result",
            "procs": c.procs,
            "keys": c.keys,
            "key_size": c.key_size,
            "value_size": c.value_size,
            "mix_get_percent": c.mix_get_percent,
            "shards": c.shards,
            "batch": c.batch,
            "matches_shf": shf,
            "phases": phases,
            "pairs": self.pairs,
            "file_bytes": self.file_bytes,
            "in_use_bytes": self.in_use,
            "file_bytes_per_pair": per(self.file_bytes),
            "in_use_bytes_per_pair": per(self.in_use),
            "shf_bytes_per_pair": if shf { Some(SHF_BYTES_PER_PAIR) } else { None },
        })
    }
}

impl Tick {
    /// The tick as one JSON object (one line of `offheap bench --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "tick",
            "phase": self.phase,
            "elapsed": self.elapsed,
            "per_worker_ops_per_s": self.per_worker,
            "total_ops_per_s": self.total,
            "file_bytes": self.file_bytes,
            "in_use_bytes": self.in_use,
        })
    }
}

/// Kills and reaps the workers still running when dropped (on an error).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

enum Msg {
    Done(usize, u64, u128),
    Gone(usize, String),
}

/// The parent side: creates the map file at `path` (which must not exist), spawns
/// `cfg.procs` workers with `spawn(id)` (a command that ends up in [`run_worker`] for that
/// id; stdin and stdout are set here), runs the phases and calls `on_tick` once a second.
/// The file is left in place; the caller removes it.
pub fn run(
    cfg: &Config,
    path: &Path,
    spawn: &dyn Fn(usize) -> Command,
    on_tick: &mut dyn FnMut(&Tick),
) -> Result<Report, WorkloadError> {
    cfg.validate().map_err(WorkloadError)?;
    let opts = SharedMapOptions::new().shards(cfg.shards).region(
        offheap::mmap::RegionOptions::new()
            .max_size(64 << 30)
            .release_threshold(1 << 20),
    );
    let m = SharedMap::create_with(path, &opts)
        .map_err(|e| WorkloadError(format!("cannot create {}: {e}", path.display())))?;
    let mut workers = Workers(Vec::with_capacity(cfg.procs));
    for id in 0..cfg.procs {
        let child = spawn(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| WorkloadError(format!("cannot start worker {id}: {e}")))?;
        workers.0.push(child);
    }
    let progress: Arc<Vec<AtomicU64>> =
        Arc::new((0..cfg.procs).map(|_| AtomicU64::new(0)).collect());
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    for (id, c) in workers.0.iter_mut().enumerate() {
        let Some(stdout) = c.stdout.take() else {
            return fail("worker without stdout");
        };
        let (tx, progress) = (tx.clone(), progress.clone());
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["p", n] => {
                        if let Ok(n) = n.parse() {
                            progress[id].store(n, Ordering::Relaxed);
                        }
                    }
                    ["d", n, ns] => match (n.parse(), ns.parse()) {
                        (Ok(n), Ok(ns)) => {
                            progress[id].store(n, Ordering::Relaxed);
                            let _ = tx.send(Msg::Done(id, n, ns));
                        }
                        _ => break,
                    },
                    _ => {
                        let _ = tx.send(Msg::Gone(id, format!("unexpected output {line:?}")));
                        return;
                    }
                }
            }
            let _ = tx.send(Msg::Gone(id, "stopped".into()));
        }));
    }
    drop(tx);

    let mut phases = Vec::new();
    // Workers whose output ended after they had finished a phase (only normal after GET).
    let mut gone: Vec<Option<String>> = vec![None; cfg.procs];
    for phase in PHASES {
        if let Some((id, why)) = gone
            .iter()
            .enumerate()
            .find_map(|(i, g)| Some((i, g.clone()?)))
        {
            return fail(format!("worker {id} {why} before {phase}"));
        }
        for p in progress.iter() {
            p.store(0, Ordering::Relaxed);
        }
        for (id, c) in workers.0.iter_mut().enumerate() {
            let sent = c
                .stdin
                .as_mut()
                .map(|s| s.write_all(b"g\n").and_then(|_| s.flush()));
            if !matches!(sent, Some(Ok(()))) {
                return fail(format!("worker {id} stopped before {phase}"));
            }
        }
        let start = Instant::now();
        let mut last = (start, vec![0u64; cfg.procs]);
        let mut next_tick = start + Duration::from_secs(1);
        let mut done: Vec<Option<(u64, u128)>> = vec![None; cfg.procs];
        while done.iter().any(Option::is_none) {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Done(id, n, ns)) => done[id] = Some((n, ns)),
                Ok(Msg::Gone(id, why)) if done[id].is_some() => gone[id] = Some(why),
                Ok(Msg::Gone(id, why)) => {
                    let status = workers.0[id]
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    return fail(format!("worker {id} {why} during {phase} ({status})"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let dt = now.duration_since(last.0).as_secs_f64();
                    let cur: Vec<u64> =
                        progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
                    let per_worker: Vec<f64> = cur
                        .iter()
                        .zip(&last.1)
                        .map(|(c, l)| c.saturating_sub(*l) as f64 / dt)
                        .collect();
                    let st = m.region_stats();
                    on_tick(&Tick {
                        phase,
                        elapsed: now.duration_since(start).as_secs_f64(),
                        total: per_worker.iter().sum(),
                        per_worker,
                        file_bytes: st.size,
                        in_use: st.in_use,
                    });
                    last = (now, cur);
                    next_tick += Duration::from_secs(1);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return fail(format!("workers stopped during {phase}"));
                }
            }
        }
        let done: Vec<(u64, u128)> = done.into_iter().flatten().collect();
        let worker_seconds: Vec<f64> = done.iter().map(|d| d.1 as f64 / 1e9).collect();
        phases.push(PhaseResult {
            phase,
            ops: done.iter().map(|d| d.0).sum(),
            seconds: worker_seconds.iter().cloned().fold(0.0, f64::max).max(1e-9),
            worker_seconds,
        });
    }
    for (id, c) in workers.0.iter_mut().enumerate() {
        drop(c.stdin.take());
        let st = c.wait()?;
        if !st.success() {
            return fail(format!("worker {id} exited with {st}"));
        }
    }
    workers.0.clear();
    for r in readers {
        let _ = r.join();
    }
    let pairs = m.len() as u64;
    if pairs != cfg.keys {
        return fail(format!(
            "the map holds {pairs} pairs at the end, not {}",
            cfg.keys
        ));
    }
    let st = m.region_stats();
    Ok(Report {
        config: cfg.clone(),
        phases,
        pairs,
        file_bytes: st.size,
        in_use: st.in_use,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_keys_once() {
        let c = Config {
            procs: 3,
            keys: 10,
            ..Config::default()
        };
        let r: Vec<_> = (0..3).map(|i| c.range(i)).collect();
        assert_eq!(r, vec![(0, 3), (3, 6), (6, 10)]);
    }

    #[test]
    fn keys_are_distinct_and_padded() {
        let mut a = padded(12);
        let mut b = padded(12);
        fill_key(&mut a, 1);
        fill_key(&mut b, 256);
        assert_ne!(a, b);
        assert_eq!(a[8..], b[8..]);
        let mut s = padded(2);
        fill_key(&mut s, 0x0102);
        assert_eq!(s, vec![2, 1]);
    }

    #[test]
    fn validate_rejects_bad_shapes() {
        let ok = Config::default();
        assert!(ok.validate().is_ok());
        assert!(ok.matches_shf());
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.procs = 0));
        assert!(bad(|c| c.keys = 1));
        assert!(bad(|c| c.key_size = 0));
        assert!(bad(|c| c.key_size = 2));
        assert!(bad(|c| c.mix_get_percent = 101));
        assert!(bad(|c| c.shards = 3));
        assert!(bad(|c| c.value_size = MAX_SIZE + 1));
        assert!(bad(|c| c.batch = 0));
        assert!(bad(|c| c.batch = MAX_BATCH + 1));
        let c = Config {
            procs: 3,
            keys: 7,
            key_size: 20,
            value_size: 0,
            mix_get_percent: 50,
            shards: 4,
            batch: 3,
        };
        assert_eq!(Config::from_worker_args(&c.worker_args()).unwrap(), c);
        assert!(Config::from_worker_args(&["x".into()]).is_err());
    }
}
