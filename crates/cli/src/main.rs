//! `offheap`: run the SharedHashFile workload on a SharedMap file, and put, get, delete,
//! inspect, check, dump and load map files (`SharedMap` and `BytesMap`). See the crate's
//! README.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use offheap::{BytesMap, SharedMap, SharedMapOptions};
use offheap_cli::codec;
use offheap_cli::workload::{self, Config, Report, Tick, PHASES, SHF_BYTES_PER_PAIR, SHF_MOPS};

#[derive(Parser)]
#[command(
    name = "offheap",
    version,
    about = "Map files (SharedMap and BytesMap): the SharedHashFile workload benchmark, and tools to put, get, inspect, check, dump and load them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the SharedHashFile workload (PUT, UPD, MIX, GET) with worker processes on one map file.
    Bench(BenchArgs),
    /// Insert or replace one pair (creates the file if it does not exist).
    Put {
        /// The map file.
        file: PathBuf,
        /// The key (UTF-8 text, or hex with --hex).
        key: String,
        /// The value (UTF-8 text, or hex with --hex).
        value: String,
        #[command(flatten)]
        enc: Encoding,
        #[command(flatten)]
        new: NewMap,
    },
    /// Print the value of a key (exit status 1 if it is absent).
    Get {
        /// The map file.
        file: PathBuf,
        /// The key (UTF-8 text, or hex with --hex).
        key: String,
        /// Key given in hex, value printed in hex.
        #[command(flatten)]
        enc: Encoding,
    },
    /// Delete a key (exit status 1 if it is absent).
    Del {
        /// The map file.
        file: PathBuf,
        /// The key (UTF-8 text, or hex with --hex).
        key: String,
        #[command(flatten)]
        enc: Encoding,
    },
    /// Entries, shards, file size, region use, fragmentation, bytes per entry.
    Stats {
        /// The map file.
        file: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check every shard and the region; exit status 1 and a message if anything is wrong.
    Check {
        /// The map file.
        file: PathBuf,
    },
    /// Write every pair as a line: escaped key TAB escaped value (or JSON lines with --json).
    Dump {
        /// The map file.
        file: PathBuf,
        /// JSON lines: {"key":..,"value":..} (key_hex / value_hex for bytes that are not UTF-8).
        #[arg(long)]
        json: bool,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Read pairs in dump's format and put them (creates the file if it does not exist).
    Load {
        /// The map file.
        file: PathBuf,
        /// Read JSON lines (as `dump --json` writes them).
        #[arg(long)]
        json: bool,
        /// Read from this file instead of stdin.
        #[arg(long, short)]
        input: Option<PathBuf>,
        #[command(flatten)]
        new: NewMap,
    },
    /// Draw the PNG plots of docs/performance.md.
    #[command(hide = true, subcommand)]
    Plot(PlotCmd),
    /// A benchmark worker (started by `offheap bench`).
    #[command(hide = true)]
    Worker {
        file: PathBuf,
        id: usize,
        #[arg(num_args = 7)]
        shape: Vec<String>,
    },
}

/// The kinds of map file the tools read and write.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Kind {
    /// `offheap::SharedMap`: many processes at once, sharded locks.
    Shared,
    /// `offheap::BytesMap`: one user at a time.
    Bytes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Shared => "SharedMap",
            Kind::Bytes => "BytesMap",
        }
    }
}

/// What a command that may create its file makes.
#[derive(Args)]
struct NewMap {
    /// The kind of map a new file holds (default: shared). If the file exists, it must
    /// hold this kind.
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Shards of a new SharedMap file (a power of two; default 256).
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(Args)]
struct Encoding {
    /// Keys and values on the command line (and get's output) in hex.
    #[arg(long)]
    hex: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Keys in total, split evenly between the workers.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// Bytes per key (keys longer than 8 bytes are padded deterministically).
    #[arg(long, default_value_t = 4)]
    key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 4)]
    value_size: usize,
    /// Percentage of gets in the MIX phase (the rest are delete + put).
    #[arg(long, default_value_t = 98)]
    mix_get_percent: u32,
    /// Shards of the map (a power of two).
    #[arg(long, default_value_t = 256)]
    shards: usize,
    /// Operations per call: 1 uses the one-key API (`put`, `get_with`, `delete`) as
    /// SharedHashFile's test does; more uses the batched, prefetching API (`put_many`,
    /// `get_many_with`, `delete_many`) with groups of this many keys.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The map file (must not exist). Default: a new file in --dir.
    #[arg(long, conflicts_with = "dir")]
    file: Option<PathBuf>,
    /// Directory for the map file. Default: /dev/shm if it exists, else the temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the map file afterwards (it is removed by default).
    #[arg(long)]
    keep: bool,
    /// Machine-readable output: a JSON line per second and one JSON object at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PlotCmd {
    /// Per-insert latency while growing, from swiss_big's --csv output.
    Latency {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Workload throughput per phase vs SharedHashFile, from `offheap bench --json` output.
    Throughput {
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Memory per entry: ours, SharedHashFile, hashbrown (peak RSS row of swiss_big's output).
    Memory {
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        swiss_big: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// An error for the user: a message, or a closed output pipe (quiet exit).
enum Fail {
    Msg(String),
    Pipe,
    /// A clean "no" (absent key): message, exit status 1.
    Absent(String),
}

type Res<T> = Result<T, Fail>;

fn msg(s: impl Into<String>) -> Fail {
    Fail::Msg(s.into())
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> Fail + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Fail::Pipe
        } else {
            msg(format!("{}: {e}", what.display()))
        }
    }
}

fn out_err(e: std::io::Error) -> Fail {
    io_err(Path::new("output"))(e)
}

fn map_err(file: &Path) -> impl Fn(offheap::Error) -> Fail + '_ {
    move |e| msg(format!("{}: {e}", file.display()))
}

/// An open map file of a kind the tools read: the same operations on either.
enum MapFile {
    Shared(SharedMap),
    Bytes(Box<BytesMap>),
}

impl MapFile {
    fn kind(&self) -> Kind {
        match self {
            MapFile::Shared(_) => Kind::Shared,
            MapFile::Bytes(_) => Kind::Bytes,
        }
    }
    fn len(&self) -> usize {
        match self {
            MapFile::Shared(m) => m.len(),
            MapFile::Bytes(m) => m.len(),
        }
    }
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, offheap::Error> {
        match self {
            MapFile::Shared(m) => m.get(k),
            MapFile::Bytes(m) => m.get(k),
        }
    }
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<bool, offheap::Error> {
        match self {
            MapFile::Shared(m) => m.put(k, v),
            MapFile::Bytes(m) => m.put(k, v),
        }
    }
    fn delete(&mut self, k: &[u8]) -> Result<bool, offheap::Error> {
        match self {
            MapFile::Shared(m) => m.delete(k),
            MapFile::Bytes(m) => m.delete(k),
        }
    }
    fn for_each(&self, f: impl FnMut(&[u8], &[u8])) -> Result<(), offheap::Error> {
        match self {
            MapFile::Shared(m) => m.for_each(f),
            MapFile::Bytes(m) => m.for_each(f),
        }
    }
    fn check(&self) -> Result<(), offheap::Error> {
        match self {
            MapFile::Shared(m) => m.check(),
            MapFile::Bytes(m) => m.check(),
        }
    }
    fn flush(&self) -> Result<(), offheap::Error> {
        match self {
            MapFile::Shared(m) => m.flush(),
            MapFile::Bytes(m) => m.flush(),
        }
    }
    fn region_stats(&self) -> offheap::mmap::RegionStats {
        match self {
            MapFile::Shared(m) => m.region_stats(),
            MapFile::Bytes(m) => m.region().stats(),
        }
    }
}

/// The root name under which `offheap::Map` stores its table.
const TYPED_MAP_ROOT: &str = "offheap.map";

/// Opens an existing map file of either kind, with a clear message for a missing or foreign
/// file, or for a typed `offheap::Map` file (whose keys and values have Rust types this
/// command does not know).
fn open(file: &Path) -> Res<MapFile> {
    match std::fs::metadata(file) {
        Err(e) => return Err(msg(format!("{}: {e}", file.display()))),
        Ok(md) if !md.is_file() => {
            return Err(msg(format!("{}: not a regular file", file.display())))
        }
        Ok(_) => {}
    }
    let cannot = |e: offheap::Error| {
        msg(format!(
            "{}: cannot open as an offheap map file: {e}",
            file.display()
        ))
    };
    match SharedMap::open(file) {
        Ok(m) => return Ok(MapFile::Shared(m)),
        Err(offheap::Error::NotFound) => {}
        Err(e) => return Err(cannot(e)),
    }
    match BytesMap::open(file) {
        Ok(m) => return Ok(MapFile::Bytes(Box::new(m))),
        Err(offheap::Error::NotFound) => {}
        Err(e) => return Err(cannot(e)),
    }
    let typed = offheap::mmap::Region::open(file)
        .ok()
        .is_some_and(|r| r.root(TYPED_MAP_ROOT).is_some());
    Err(msg(if typed {
        format!(
            "{}: a typed offheap::Map file: its keys and values are Rust types this command \
             does not know (it reads SharedMap and BytesMap files); open it with offheap::Map",
            file.display()
        )
    } else {
        format!(
            "{}: cannot open as an offheap map file: the region holds no SharedMap or BytesMap",
            file.display()
        )
    }))
}

/// Opens `file`, or creates it as `new` says if it does not exist.
fn open_or_create(file: &Path, new: &NewMap) -> Res<MapFile> {
    if new.kind == Some(Kind::Bytes) && new.shards.is_some() {
        return Err(msg("--shards applies to SharedMap files (--kind shared)"));
    }
    if file.exists() {
        let m = open(file)?;
        if let Some(k) = new.kind {
            if k != m.kind() {
                return Err(msg(format!(
                    "{}: holds a {}, not a {} (--kind)",
                    file.display(),
                    m.kind().name(),
                    k.name()
                )));
            }
        }
        return Ok(m);
    }
    let created = match new.kind.unwrap_or(Kind::Shared) {
        Kind::Shared => {
            let opts = SharedMapOptions::new().shards(new.shards.unwrap_or(256));
            SharedMap::create_with(file, &opts).map(MapFile::Shared)
        }
        Kind::Bytes => BytesMap::create(file).map(|m| MapFile::Bytes(Box::new(m))),
    };
    created.map_err(|e| msg(format!("{}: cannot create: {e}", file.display())))
}

fn arg_bytes(s: &str, enc: &Encoding, what: &str) -> Res<Vec<u8>> {
    if enc.hex {
        codec::from_hex(s).map_err(|e| msg(format!("{what} is not valid hex: {e}")))
    } else {
        Ok(s.as_bytes().to_vec())
    }
}

fn show_key(k: &[u8]) -> String {
    codec::escape(k)
}

/// A progress bar on stderr if it is a terminal (hidden otherwise): of `len` pairs, or
/// bytes if `bytes`, or a spinner counting pairs if the length is unknown.
fn progress(len: Option<u64>, bytes: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let style = match (len, bytes) {
        (Some(_), true) => ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} eta {eta}"),
        (Some(_), false) => {
            ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} pairs eta {eta}")
        }
        (None, _) => ProgressStyle::with_template("{spinner} {human_pos} pairs {elapsed}"),
    };
    if let Ok(s) = style {
        pb.set_style(s);
    }
    pb
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a panic message with a backtrace hint.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("offheap: error: internal error (a bug): {what}");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("offheap: error: {first} (see offheap --help)");
            return ExitCode::from(2);
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Fail::Pipe)) => ExitCode::SUCCESS,
        Ok(Err(Fail::Msg(m))) | Ok(Err(Fail::Absent(m))) => {
            eprintln!("offheap: error: {m}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(101),
    }
}

fn run(cli: Cli) -> Res<()> {
    match cli.cmd {
        Cmd::Bench(a) => bench(a),
        Cmd::Put {
            file,
            key,
            value,
            enc,
            new,
        } => {
            let (k, v) = (
                arg_bytes(&key, &enc, "key")?,
                arg_bytes(&value, &enc, "value")?,
            );
            let mut m = open_or_create(&file, &new)?;
            m.put(&k, &v).map_err(map_err(&file))?;
            Ok(())
        }
        Cmd::Get { file, key, enc } => {
            let k = arg_bytes(&key, &enc, "key")?;
            let m = open(&file)?;
            match m.get(&k).map_err(map_err(&file))? {
                Some(v) => {
                    let mut out = std::io::stdout().lock();
                    if enc.hex {
                        writeln!(out, "{}", codec::to_hex(&v)).map_err(out_err)?;
                    } else {
                        out.write_all(&v).map_err(out_err)?;
                        out.write_all(b"\n").map_err(out_err)?;
                    }
                    out.flush().map_err(out_err)
                }
                None => Err(Fail::Absent(format!("key not found: {}", show_key(&k)))),
            }
        }
        Cmd::Del { file, key, enc } => {
            let k = arg_bytes(&key, &enc, "key")?;
            let mut m = open(&file)?;
            if m.delete(&k).map_err(map_err(&file))? {
                Ok(())
            } else {
                Err(Fail::Absent(format!("key not found: {}", show_key(&k))))
            }
        }
        Cmd::Stats { file, json } => stats(&file, json),
        Cmd::Check { file } => {
            let m = open(&file)?;
            m.check()
                .map_err(|e| msg(format!("{}: check failed: {e}", file.display())))?;
            match &m {
                MapFile::Shared(s) => println!(
                    "{}: ok ({} entries in {} shards; every shard and the region checked)",
                    file.display(),
                    s.len(),
                    s.shards()
                ),
                MapFile::Bytes(b) => println!(
                    "{}: ok ({} entries in a BytesMap; its index table, every pair, the arena and the region checked)",
                    file.display(),
                    b.len()
                ),
            }
            Ok(())
        }
        Cmd::Dump { file, json, output } => dump(&file, json, output.as_deref()),
        Cmd::Load {
            file,
            json,
            input,
            new,
        } => load(&file, json, input.as_deref(), &new),
        Cmd::Plot(p) => plot(p),
        Cmd::Worker { file, id, shape } => {
            let cfg = Config::from_worker_args(&shape).map_err(msg)?;
            let stdin = std::io::stdin().lock();
            let stdout = BufWriter::new(std::io::stdout().lock());
            workload::run_worker(&cfg, &file, id, stdin, stdout).map_err(|e| msg(e.0))
        }
    }
}

fn stats(file: &Path, json: bool) -> Res<()> {
    let m = open(file)?;
    let st = m.region_stats();
    let entries = m.len() as u64;
    let frag = if st.free == 0 {
        0.0
    } else {
        1.0 - st.largest_free as f64 / st.free as f64
    };
    let per = |b: u64| {
        if entries == 0 {
            None
        } else {
            Some(b as f64 / entries as f64)
        }
    };
    let (shards, recoveries) = match &m {
        MapFile::Shared(s) => (Some(s.shards()), Some(s.recoveries())),
        MapFile::Bytes(_) => (None, None),
    };
    if json {
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "kind": match m.kind() { Kind::Shared => "shared", Kind::Bytes => "bytes" },
            "entries": entries,
            "shards": shards,
            "file_bytes": st.size,
            "disk_bytes": st.file_bytes,
            "in_use_bytes": st.in_use,
            "free_bytes": st.free,
            "free_blocks": st.free_blocks,
            "largest_free_bytes": st.largest_free,
            "allocations": st.allocations,
            "fragmentation": frag,
            "file_bytes_per_entry": per(st.size),
            "in_use_bytes_per_entry": per(st.in_use),
            "recoveries": recoveries,
        });
        println!("{v}");
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let fmt_per = |b: u64| per(b).map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut o = String::new();
    o += &format!("file             {}\n", file.display());
    o += &format!("map              {}\n", m.kind().name());
    o += &format!("entries          {entries}\n");
    if let Some(n) = shards {
        o += &format!("shards           {n}\n");
    }
    o += &format!(
        "file size        {} bytes ({:.1} MiB)\n",
        st.size,
        mib(st.size)
    );
    if let Some(d) = st.file_bytes {
        o += &format!("on disk          {d} bytes ({:.1} MiB)\n", mib(d));
    }
    o += &format!(
        "region in use    {} bytes ({:.1} MiB) in {} blocks\n",
        st.in_use,
        mib(st.in_use),
        st.allocations
    );
    o += &format!(
        "region free      {} bytes ({:.1} MiB) in {} blocks, largest {} bytes\n",
        st.free,
        mib(st.free),
        st.free_blocks,
        st.largest_free
    );
    o += &format!("fragmentation    {frag:.3} (1 - largest free block / free bytes)\n");
    o += &format!(
        "bytes per entry  {} (file), {} (in use)\n",
        fmt_per(st.size),
        fmt_per(st.in_use)
    );
    if let Some(r) = recoveries {
        o += &format!("recoveries       {r} (by this command)\n");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(o.as_bytes()).map_err(out_err)?;
    out.flush().map_err(out_err)
}

fn dump(file: &Path, json: bool, output: Option<&Path>) -> Res<()> {
    let m = open(file)?;
    let sink: Box<dyn Write> = match output {
        Some(p) => Box::new(std::fs::File::create(p).map_err(io_err(p))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = BufWriter::with_capacity(1 << 16, sink);
    let pb = progress(Some(m.len() as u64), false);
    let mut failed: Option<std::io::Error> = None;
    let mut n = 0u64;
    m.for_each(|k, v| {
        if failed.is_some() {
            return;
        }
        let line = if json {
            codec::format_json_line(k, v)
        } else {
            codec::format_line(k, v)
        };
        if let Err(e) = writeln!(w, "{line}") {
            failed = Some(e);
        }
        n += 1;
        if n % 4096 == 0 {
            pb.set_position(n);
        }
    })
    .map_err(map_err(file))?;
    pb.finish_and_clear();
    let dest = output.unwrap_or(Path::new("output"));
    if let Some(e) = failed {
        return Err(io_err(dest)(e));
    }
    w.flush().map_err(io_err(dest))
}

fn load(file: &Path, json: bool, input: Option<&Path>, new: &NewMap) -> Res<()> {
    let (src, len): (Box<dyn BufRead>, Option<u64>) = match input {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(io_err(p))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(std::io::BufReader::with_capacity(1 << 16, f)), len)
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let src_name = input.unwrap_or(Path::new("stdin"));
    let mut m = open_or_create(file, new)?;
    let pb = progress(len, true);
    let (mut pairs, mut bytes) = (0u64, 0u64);
    for (i, line) in src.lines().enumerate() {
        let line = line.map_err(io_err(src_name))?;
        bytes += line.len() as u64 + 1;
        if line.is_empty() {
            continue;
        }
        let parsed = if json {
            codec::parse_json_line(&line)
        } else {
            codec::parse_line(&line)
        };
        let (k, v) =
            parsed.map_err(|e| msg(format!("{}: line {}: {e}", src_name.display(), i + 1)))?;
        m.put(&k, &v).map_err(map_err(file))?;
        pairs += 1;
        if pairs % 4096 == 0 {
            pb.set_position(if len.is_some() { bytes } else { pairs });
        }
    }
    pb.finish_and_clear();
    m.flush().map_err(map_err(file))?;
    eprintln!("offheap: loaded {pairs} pairs into {}", file.display());
    Ok(())
}

/// Removes the bench's map file when dropped, unless it is kept.
struct Remove(Option<PathBuf>);

impl Drop for Remove {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn bench(a: BenchArgs) -> Res<()> {
    let cfg = Config {
        procs: a.procs,
        keys: a.keys,
        key_size: a.key_size,
        value_size: a.value_size,
        mix_get_percent: a.mix_get_percent,
        shards: a.shards,
        batch: a.batch,
    };
    cfg.validate().map_err(msg)?;
    let path = match (a.file, a.dir) {
        (Some(f), _) => f,
        (None, dir) => {
            let dir = dir.unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            });
            dir.join(format!("offheap-bench-{}.map", std::process::id()))
        }
    };
    if path.exists() {
        return Err(msg(format!(
            "{}: already exists (the bench creates a new file)",
            path.display()
        )));
    }
    let exe = std::env::current_exe().map_err(|e| msg(format!("cannot find own binary: {e}")))?;
    let _cleanup = Remove(if a.keep { None } else { Some(path.clone()) });
    if !a.json {
        println!(
            "offheap bench: {} processes, {} keys, {}-byte keys, {}-byte values, MIX {}% get, {} shards, {}, file {}",
            cfg.procs,
            cfg.keys,
            cfg.key_size,
            cfg.value_size,
            cfg.mix_get_percent,
            cfg.shards,
            if cfg.batch == 1 {
                "one key per call".to_string()
            } else {
                format!("batches of {}", cfg.batch)
            },
            path.display()
        );
    }
    let shape = cfg.worker_args();
    let spawn = |id: usize| {
        let mut c = Command::new(&exe);
        c.arg("worker").arg(&path).arg(id.to_string()).args(&shape);
        c
    };
    let json = a.json;
    let mut out_failed = None;
    let mut on_tick = |t: &Tick| {
        let line = if json {
            t.to_json().to_string()
        } else {
            tick_line(t)
        };
        let mut o = std::io::stdout().lock();
        if let Err(e) = writeln!(o, "{line}").and_then(|_| o.flush()) {
            out_failed.get_or_insert(e);
        }
    };
    let report = workload::run(&cfg, &path, &spawn, &mut on_tick).map_err(|e| msg(e.0))?;
    if let Some(e) = out_failed {
        return Err(out_err(e));
    }
    let text = if json {
        report.to_json().to_string() + "\n"
    } else {
        summary(&report)
    };
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).map_err(out_err)?;
    if a.keep && !json {
        writeln!(o, "kept {}", path.display()).map_err(out_err)?;
    }
    o.flush().map_err(out_err)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn tick_line(t: &Tick) -> String {
    let workers: Vec<String> = t
        .per_worker
        .iter()
        .map(|w| format!("{:.2}", w / 1e6))
        .collect();
    format!(
        "{} {:>5.1}s  workers [{}] M ops/s  total {:.2} M ops/s  memory {:.1} MiB file / {:.1} MiB in use",
        t.phase,
        t.elapsed,
        workers.join(" "),
        t.total / 1e6,
        mib(t.file_bytes),
        mib(t.in_use)
    )
}

fn summary(r: &Report) -> String {
    let shf = r.config.matches_shf();
    let mut s = String::new();
    s += "\nphase   M ops/s     ns/op";
    if shf {
        s += "   SharedHashFile   ratio";
    }
    s += "\n";
    for (i, p) in r.phases.iter().enumerate() {
        s += &format!("{:<5} {:>9.2} {:>9.1}", p.phase, p.mops(), p.ns_per_op());
        if shf {
            s += &format!(" {:>16.2} {:>7.2}x", SHF_MOPS[i], p.mops() / SHF_MOPS[i]);
        }
        s += "\n";
    }
    debug_assert_eq!(r.phases.len(), PHASES.len());
    let per = |b: u64| b as f64 / r.pairs.max(1) as f64;
    s += &format!(
        "memory: {} pairs; file {:.1} MiB = {:.1} B/pair; region in use {:.1} MiB = {:.1} B/pair",
        r.pairs,
        mib(r.file_bytes),
        per(r.file_bytes),
        mib(r.in_use),
        per(r.in_use)
    );
    if shf {
        s += &format!(" (SharedHashFile {SHF_BYTES_PER_PAIR} B/pair)");
    }
    s += "\n(M ops/s: all workers' operations / the slowest worker's time; ns/op: its inverse)\n";
    s
}

fn plot(p: PlotCmd) -> Res<()> {
    use offheap_cli::plot;
    let (res, out) = match p {
        PlotCmd::Latency { csv, out } => (plot::latency(&csv, &out), out),
        PlotCmd::Throughput { json, out } => (plot::throughput(&json, &out), out),
        PlotCmd::Memory {
            json,
            swiss_big,
            out,
        } => (plot::memory(&json, &swiss_big, &out), out),
    };
    res.map_err(msg)?;
    println!("wrote {}", out.display());
    Ok(())
}
