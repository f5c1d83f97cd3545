//! offheap-swiss vs hashbrown at 50M keys (u64 -> u64, same xxh3 hasher), outside criterion:
//! one process per table (so peak RSS is each table's own), each row timed once.
//!
//! Rows: insert from empty (ns/key), lookup hit / miss (ns/key, 10M random keys, computed
//! before the timing), remove (ns/key, all keys), batched lookup (`get_many`, ours only, the
//! same keys as the hits), worst single insert while growing, peak RSS while growing (bytes
//! per entry), and a per-insert latency trace: the worst insert in each of 1000 consecutive
//! slices of the run, written as CSV, and an SVG plot of both traces.
//!
//! Ours runs twice: with huge pages (`offheap`, `RegionOptions::huge_pages(true)`) and
//! without them (`offheap_4k`, the default of `SwissTable::new`; `--no-4k` skips it).
//!
//! Run (about 4-6 minutes and 2 GiB of memory at 50M):
//! `cargo bench -p offheap-benches --features swiss --bench swiss_big -- [N] [--no-4k] [--svg PATH] [--csv PATH] [--rounds R] [--no-trace]`
//! The docs' plot: `... -- 50000000 --svg docs/img/swiss-insert-latency.svg --csv target/swiss-insert-latency.csv`
//!
//! `--rounds R` runs every table `R` times, rotating which goes first in each round, and
//! prints each table's median per row, and the median and range of the per-round ratios: on
//! a shared host one run per table can rank two tables either way (docs/swiss-log.md, "Profiles
//! of large inserts"). `--no-trace` skips the second growth, the one that times every insert
//! (no worst-insert rows and no trace then), which halves each run.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use hashbrown::HashMap;
use offheap_swiss::{SwissTable, TableOptions, Xxh3BuildHasher};

const SEED: u64 = 0x5EED;
const SLICES: usize = 1000;

fn key(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// (VmRSS, VmHWM) in bytes.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Best of `reps` runs of `f`, in ns per `per` operations.
fn best(reps: usize, per: u64, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_nanos() as f64 / per as f64
        })
        .fold(f64::MAX, f64::min)
}

/// The operations both tables offer.
trait Map {
    fn new() -> Self;
    fn ins(&mut self, k: u64, v: u64);
    fn get(&self, k: u64) -> Option<u64>;
    fn rem(&mut self, k: u64) -> Option<u64>;
    fn batched(&self, _keys: &[u64], _out: &mut [Option<u64>]) -> Option<usize> {
        None
    }
}

impl Map for SwissTable<u64, u64> {
    fn new() -> Self {
        let mut opts = offheap_swiss::default_region_options().max_size(256 << 30);
        // Experiment knob: the region's give-back threshold (bytes; default 1 MiB).
        if let Some(t) = std::env::var("SWISS_BIG_RELEASE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            opts = opts.release_threshold(t);
        }
        // Set by the parent: huge pages for the `offheap` child, none (the default of
        // `SwissTable::new`) for the `offheap_4k` child.
        match std::env::var("SWISS_BIG_HUGE").as_deref() {
            Ok("0") => opts = opts.huge_pages(false),
            Ok("1") => opts = opts.huge_pages(true),
            _ => {}
        }
        let mem = offheap_mmap::Region::anonymous_with(&opts).unwrap();
        SwissTable::with_options_in(TableOptions::new().seed(SEED), mem).unwrap()
    }
    #[inline]
    fn ins(&mut self, k: u64, v: u64) {
        self.insert(k, v);
    }
    #[inline]
    fn get(&self, k: u64) -> Option<u64> {
        SwissTable::get(self, &k).copied()
    }
    #[inline]
    fn rem(&mut self, k: u64) -> Option<u64> {
        self.remove(&k)
    }
    fn batched(&self, keys: &[u64], out: &mut [Option<u64>]) -> Option<usize> {
        Some(self.get_many(keys, out))
    }
}

impl Map for HashMap<u64, u64, Xxh3BuildHasher> {
    fn new() -> Self {
        HashMap::with_hasher(Xxh3BuildHasher::with_seed(SEED))
    }
    #[inline]
    fn ins(&mut self, k: u64, v: u64) {
        self.insert(k, v);
    }
    #[inline]
    fn get(&self, k: u64) -> Option<u64> {
        HashMap::get(self, &k).copied()
    }
    #[inline]
    fn rem(&mut self, k: u64) -> Option<u64> {
        self.remove(&k)
    }
}

/// Runs every row for one table type; prints `name=value` pairs, then the trace.
fn child<M: Map>(n: u64) {
    let lookups = n.min(10_000_000);
    let (base, _) = rss();
    let mut out = Vec::new();

    let t0 = Instant::now();
    let mut m = M::new();
    for i in 0..n {
        m.ins(key(i), i);
    }
    let insert_ns = t0.elapsed().as_nanos() as f64 / n as f64;
    let (now, peak) = rss();
    out.push(format!("insert_ns={insert_ns:.1}"));
    out.push(format!(
        "peak_b_per_entry={:.1}",
        (peak - base) as f64 / n as f64
    ));
    out.push(format!(
        "final_b_per_entry={:.1}",
        (now - base) as f64 / n as f64
    ));

    // Lookups: present keys in a scrambled order (a multiplicative stride, so no two are
    // adjacent) and absent keys, computed before the timing (as the criterion suite does), so
    // that the timed loops are the tables' work and not the keys' (the index's division and
    // splitmix). The same present keys feed the batched lookup. Best of 3 (the machine may be
    // shared).
    let reps = 3;
    let stride = 0x9E37_79B9u64 | 1;
    let present: Vec<u64> = (0..lookups)
        .map(|j| key(j.wrapping_mul(stride) % n))
        .collect();
    let absent: Vec<u64> = (0..lookups).map(|j| key(n + j)).collect();
    let hit = best(reps, lookups, || {
        let mut s = 0u64;
        for &k in &present {
            s = s.wrapping_add(m.get(k).unwrap());
        }
        black_box(s);
    });
    out.push(format!("hit_ns={hit:.1}"));
    let miss = best(reps, lookups, || {
        let mut c = 0u64;
        for &k in &absent {
            c += m.get(k).is_some() as u64;
        }
        assert_eq!(black_box(c), 0);
    });
    out.push(format!("miss_ns={miss:.1}"));
    let mut res = vec![None; 1024];
    if m.batched(&present[..1], &mut res[..1]).is_some() {
        let b = best(reps, lookups, || {
            let mut found = 0;
            for chunk in present.chunks(1024) {
                found += m.batched(chunk, &mut res[..chunk.len()]).unwrap();
            }
            assert_eq!(found as u64, lookups);
        });
        out.push(format!("batched_ns={b:.1}"));
    }
    drop((present, absent));

    let t0 = Instant::now();
    for i in 0..n {
        black_box(m.rem(key(i)));
    }
    out.push(format!(
        "remove_ns={:.1}",
        t0.elapsed().as_nanos() as f64 / n as f64
    ));
    drop(m);
    if std::env::var_os("SWISS_BIG_NO_TRACE").is_some() {
        println!("{}", out.join(" "));
        return;
    }

    // Per-insert latency while growing.
    let mut m = M::new();
    let per = (n as usize / SLICES).max(1);
    let mut trace = Vec::with_capacity(SLICES + 1);
    let (mut worst, mut worst_cpu) = (0u64, 0u64);
    let (mut slice_worst, mut slice_cpu) = (0u64, 0u64);
    for i in 0..n {
        let k = key(i);
        let c = offheap_testkit::thread_cpu_ns();
        let t = Instant::now();
        m.ins(k, i);
        let d = t.elapsed().as_nanos() as u64;
        let dc = offheap_testkit::thread_cpu_ns() - c;
        slice_worst = slice_worst.max(d);
        slice_cpu = slice_cpu.max(dc);
        if (i as usize + 1) % per == 0 {
            trace.push((i + 1, slice_cpu, slice_worst));
            worst = worst.max(slice_worst);
            worst_cpu = worst_cpu.max(slice_cpu);
            (slice_worst, slice_cpu) = (0, 0);
        }
    }
    worst = worst.max(slice_worst);
    worst_cpu = worst_cpu.max(slice_cpu);
    out.push(format!(
        "worst_insert_cpu_us={:.1}",
        worst_cpu as f64 / 1000.0
    ));
    out.push(format!("worst_insert_wall_us={:.1}", worst as f64 / 1000.0));
    println!("{}", out.join(" "));
    for (i, c, w) in trace {
        println!("trace {i} {c} {w}");
    }
}

struct Run {
    rows: Vec<(String, f64)>,
    /// (inserted, worst CPU ns, worst wall ns) per slice.
    trace: Vec<(u64, u64, u64)>,
}

fn spawn(which: &str, n: u64, no_trace: bool) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--child", which, &n.to_string()]).env(
        "SWISS_BIG_HUGE",
        if which == "offheap_4k" { "0" } else { "1" },
    );
    if no_trace {
        cmd.env("SWISS_BIG_NO_TRACE", "1");
    }
    let o = cmd.output().expect("spawn child");
    assert!(
        o.status.success(),
        "{which}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    let mut run = Run {
        rows: Vec::new(),
        trace: Vec::new(),
    };
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("trace ") {
            let v: Vec<u64> = t.split(' ').map(|x| x.parse().unwrap()).collect();
            run.trace.push((v[0], v[1], v[2]));
        } else if line.contains('=') {
            for kv in line.split(' ') {
                let (k, v) = kv.split_once('=').unwrap();
                run.rows.push((k.to_string(), v.parse().unwrap()));
            }
        }
    }
    run
}

/// A log-scale SVG of the two traces (worst insert per slice, CPU time, microseconds).
fn svg(n: u64, ours: &[(u64, u64)], small: &[(u64, u64)], theirs: &[(u64, u64)]) -> String {
    let (w, h, l, r, t, b) = (900.0, 420.0, 70.0, 20.0, 40.0, 50.0);
    let ymin: f64 = 0.1; // µs
    let ymax = ours
        .iter()
        .chain(small)
        .chain(theirs)
        .map(|&(_, d)| d as f64 / 1000.0)
        .fold(10.0f64, f64::max)
        * 2.0;
    let x = |i: u64| l + (w - l - r) * i as f64 / n as f64;
    let y = |us: f64| {
        let v = us.max(ymin);
        t + (h - t - b) * (1.0 - (v.ln() - ymin.ln()) / (ymax.ln() - ymin.ln()))
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &format!(
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">Worst single insert (thread CPU time) per {} inserts while growing to {} keys (u64 -> u64, xxh3)</text>\n",
        w / 2.0,
        n / SLICES as u64,
        n
    );
    let mut dec = ymin;
    while dec <= ymax {
        let yy = y(dec);
        s += &format!(
            "<line x1=\"{l}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\n",
            w - r
        );
        let label = if dec >= 1000.0 {
            format!("{} ms", dec / 1000.0)
        } else {
            format!("{dec} µs")
        };
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
            l - 6.0,
            yy + 4.0
        );
        dec *= 10.0;
    }
    for k in 0..=5 {
        let i = n * k / 5;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}M</text>\n",
            x(i),
            h - b + 18.0,
            i as f64 / 1e6
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">keys inserted</text>\n",
        w / 2.0,
        h - 10.0
    );
    for (pts, color, name, ly) in [
        (theirs, "#d62728", "hashbrown", 0.0),
        (
            small,
            "#2ca02c",
            "offheap-swiss, 4 KiB pages (default)",
            32.0,
        ),
        (ours, "#1f77b4", "offheap-swiss, huge pages", 16.0),
    ] {
        let p: Vec<String> = pts
            .iter()
            .map(|&(i, d)| format!("{:.1},{:.1}", x(i), y(d as f64 / 1000.0)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\" points=\"{}\"/>\n",
            p.join(" ")
        );
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            l + 10.0,
            t + 14.0 + ly
        );
    }
    s + "</svg>\n"
}

/// The median of `v` (the mean of the middle two for an even count); `v` nonempty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `--rounds`: each table's median per row, and for each of ours the median and the range
/// of its per-round ratios to hashbrown (hashbrown is the last of `names`).
fn print_rounds(n: u64, names: &[&str], runs: &[Vec<Run>]) {
    let rounds = runs[0].len();
    println!("u64 -> u64, xxh3 for both, {n} keys (one process each), {rounds} rounds");
    println!("offheap: RegionOptions::huge_pages(true); offheap_4k: 4 KiB pages (the default)");
    println!("each table's median; ratio to hashbrown: median of the rounds' ratios [min-max]");
    let value = |run: &Run, k: &str| run.rows.iter().find(|(k2, _)| k2 == k).map(|&(_, v)| v);
    let mut head = format!("{:<20}", "row");
    for t in names {
        head += &format!(" {t:>12}");
    }
    for t in &names[..names.len() - 1] {
        head += &format!(" {:>22}", format!("ratio {t}"));
    }
    println!("{head}");
    let theirs = &runs[names.len() - 1];
    for (k, _) in &runs[0][0].rows {
        let mut line = format!("{k:<20}");
        for t in runs {
            let v: Vec<f64> = t.iter().filter_map(|r| value(r, k)).collect();
            line += &if v.is_empty() {
                format!(" {:>12}", "-")
            } else {
                format!(" {:>12.1}", median(v))
            };
        }
        for t in &runs[..runs.len() - 1] {
            let q: Vec<f64> = t
                .iter()
                .zip(theirs)
                .filter_map(|(a, b)| Some(value(a, k)? / value(b, k)?))
                .collect();
            line += &if q.is_empty() {
                format!(" {:>22}", "-")
            } else {
                let (lo, hi) = q
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                format!(" {:>22}", format!("{:.2} [{lo:.2}-{hi:.2}]", median(q)))
            };
        }
        println!("{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let n = args[2].parse().unwrap();
        match args[1].as_str() {
            "offheap" | "offheap_4k" => child::<SwissTable<u64, u64>>(n),
            _ => child::<HashMap<u64, u64, Xxh3BuildHasher>>(n),
        }
        return;
    }
    let mut n = 50_000_000u64;
    let mut svg_path = None;
    let mut csv_path = None;
    let mut no_4k = false;
    let mut no_trace = false;
    let mut rounds = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-4k" => no_4k = true,
            "--no-trace" => no_trace = true,
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|r| r.parse().ok())
                    .filter(|&r| r > 0)
                    .expect("--rounds takes a positive count")
            }
            "--svg" => svg_path = it.next().cloned(),
            "--csv" => csv_path = it.next().cloned(),
            s => {
                if let Ok(v) = s.parse() {
                    n = v
                }
            }
        }
    }
    // Relative paths are taken from the workspace root (cargo runs benches in `benches/`).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let svg_path = svg_path.map(|p| root.join(p));
    let csv_path = csv_path.map(|p| root.join(p));
    // Runs per table, in the order of `names`; round `r` starts with table `r % names.len()`.
    let names: Vec<&str> = ["offheap", "offheap_4k", "hashbrown"]
        .into_iter()
        .filter(|&t| !(no_4k && t == "offheap_4k"))
        .collect();
    let mut runs: Vec<Vec<Run>> = names.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for j in 0..names.len() {
            let t = (r + j) % names.len();
            runs[t].push(spawn(names[t], n, no_trace));
        }
    }
    if rounds > 1 {
        print_rounds(n, &names, &runs);
        if svg_path.is_some() || csv_path.is_some() {
            println!("no trace written: --svg and --csv take one round");
        }
        return;
    }
    let mut runs = runs.into_iter().map(|mut v| v.remove(0));
    let ours = runs.next().unwrap();
    let small = if no_4k { None } else { runs.next() };
    let theirs = runs.next().unwrap();
    println!("u64 -> u64, xxh3 for both, {n} keys (one process each)");
    println!("offheap: RegionOptions::huge_pages(true); offheap_4k: 4 KiB pages (the default)");
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "row", "offheap", "offheap_4k", "hashbrown", "ratio", "ratio_4k"
    );
    let find = |run: Option<&Run>, k: &str| {
        run.and_then(|r| r.rows.iter().find(|(k2, _)| k2 == k).map(|&(_, v)| v))
    };
    let cell = |v: Option<f64>, w: usize| match v {
        Some(v) => format!("{v:>w$.1}"),
        None => format!("{:>w$}", "-"),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:>8.2}", a / b),
        _ => format!("{:>8}", "-"),
    };
    for (k, v) in &ours.rows {
        let (v, s4, h) = (Some(*v), find(small.as_ref(), k), find(Some(&theirs), k));
        println!(
            "{k:<20} {} {} {} {} {}",
            cell(v, 12),
            cell(s4, 12),
            cell(h, 12),
            ratio(v, h),
            ratio(s4, h)
        );
    }
    if let Some(p) = csv_path {
        let mut s = String::from(
            "inserted,offheap_worst_cpu_ns,offheap_worst_wall_ns,hashbrown_worst_cpu_ns,hashbrown_worst_wall_ns,offheap_4k_worst_cpu_ns,offheap_4k_worst_wall_ns\n",
        );
        let none = Vec::new();
        let small_trace = small.as_ref().map_or(&none, |r| &r.trace);
        for (i, (a, b)) in ours.trace.iter().zip(&theirs.trace).enumerate() {
            let c = small_trace.get(i).map_or((0, 0), |c| (c.1, c.2));
            s += &format!("{},{},{},{},{},{},{}\n", a.0, a.1, a.2, b.1, b.2, c.0, c.1);
        }
        std::fs::write(&p, s).unwrap();
        println!("wrote {}", p.display());
    }
    if let Some(p) = svg_path {
        let cpu = |t: &[(u64, u64, u64)]| t.iter().map(|&(i, c, _)| (i, c)).collect::<Vec<_>>();
        std::fs::write(
            &p,
            svg(
                n,
                &cpu(&ours.trace),
                &small.as_ref().map_or_else(Vec::new, |r| cpu(&r.trace)),
                &cpu(&theirs.trace),
            ),
        )
        .unwrap();
        println!("wrote {}", p.display());
    }
}
