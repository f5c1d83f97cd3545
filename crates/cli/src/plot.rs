//! The PNG plots of `docs/performance.md` (the hidden `offheap plot` subcommand).
//!
//! Text is drawn with DejaVu Sans Mono, embedded in the binary (`assets/`, with its
//! license), so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::workload::{PHASES, SHF_BYTES_PER_PAIR, SHF_MOPS};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const SIZE: (u32, u32) = (900, 520);
const OURS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const PEER: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const OTHER: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

fn font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font is invalid".to_string());
    });
    res
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn e<E: std::fmt::Display>(err: E) -> String {
    format!("drawing failed: {err}")
}

/// inserted, worst CPU ns of offheap-swiss, of hashbrown.
type Row = (f64, f64, f64);

/// One row of swiss_big's CSV: inserted, then worst CPU ns per slice (ours, hashbrown).
/// Ours is the run with `SwissTable::new`'s default 4 KiB pages (`offheap_4k_*`) when
/// the CSV has it, else the one run it has (`offheap_*`, older CSVs).
fn latency_rows(csv: &str) -> Result<Vec<Row>, String> {
    let mut lines = csv.lines();
    let head = lines.next().ok_or("empty CSV")?;
    let cols: Vec<&str> = head.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or(format!("no column {name}"))
    };
    let (i, o, h) = (
        col("inserted")?,
        col("offheap_4k_worst_cpu_ns").or_else(|_| col("offheap_worst_cpu_ns"))?,
        col("hashbrown_worst_cpu_ns")?,
    );
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |j: usize| -> Result<f64, String> {
                f.get(j)
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or(format!("line {}: column {j} is not a number", n + 2))
            };
            Ok((num(i)?, num(o)?, num(h)?))
        })
        .collect()
}

/// Per-insert latency while growing: the worst insert (CPU time) in each slice of the run,
/// offheap-swiss vs hashbrown, from the CSV that swiss_big's `--csv` writes.
pub fn latency(csv: &Path, out: &Path) -> Result<(), String> {
    font()?;
    let rows = latency_rows(&read(csv)?)?;
    if rows.is_empty() {
        return Err(format!("{}: no rows", csv.display()));
    }
    let xmax = rows.iter().map(|r| r.0).fold(1.0, f64::max) / 1e6;
    let ymax = rows.iter().map(|r| r.1.max(r.2)).fold(1.0, f64::max) / 1e3;
    let ymin = rows
        .iter()
        .map(|r| r.1.min(r.2))
        .filter(|&v| v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(ymax)
        / 1e3;
    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            "Worst insert per slice of 1/1000 of the run (CPU time)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..xmax, ((ymin * 0.8).max(1e-3)..ymax * 1.5).log_scale())
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("keys inserted (millions)")
        .y_desc("worst insert in slice (µs, log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let us = |v: f64| (v / 1e3).max(ymin * 0.8);
    let lines = [
        ("hashbrown (all-at-once rehash)", PEER, false),
        ("offheap-swiss (segment splits)", OURS, true),
    ];
    for (name, color, ours) in lines {
        let y = |r: &Row| if ours { r.1 } else { r.2 };
        c.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.0 / 1e6, us(y(r)))),
            color.stroke_width(1),
        ))
        .map_err(e)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend_and_save(&mut c, &root, SeriesLabelPosition::UpperLeft)
}

/// Draws the legend at `pos` and writes the file.
fn legend_and_save<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    c: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
    pos: SeriesLabelPosition,
) -> Result<(), String> {
    c.configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// The `"type":"result"` object of `offheap bench --json` output (the last such line).
pub fn bench_result(text: &str) -> Result<serde_json::Value, String> {
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "result")
        .ok_or_else(|| "no result object (the output of `offheap bench --json`)".to_string())
}

/// One bar: centre, width, height, index of its series.
type Bar = (f64, f64, f64, usize);

/// A bar chart with a label under each integer x from 0 and a legend entry per series.
fn bar_chart(
    out: &Path,
    caption: &str,
    y_desc: &str,
    labels: &[&str],
    series: &[(&str, RGBColor)],
    bars: &[Bar],
) -> Result<(), String> {
    font()?;
    let ymax = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.3;
    let n = labels.len() as f64;
    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut c = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..ymax)
        .map_err(e)?;
    let names: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (si, &(name, color)) in series.iter().enumerate() {
        let mine: Vec<Bar> = bars.iter().filter(|b| b.3 == si).cloned().collect();
        c.draw_series(mine.iter().map(|&(x, w, v, _)| {
            Rectangle::new([(x - w / 2.0, 0.0), (x + w / 2.0, v)], color.filled())
        }))
        .map_err(e)?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        c.draw_series(mine.iter().map(|&(x, w, v, _)| {
            Text::new(
                format!("{v:.1}"),
                (x - w / 2.0, v + ymax * 0.01),
                ("sans-serif", 13).into_font(),
            )
        }))
        .map_err(e)?;
    }
    legend_and_save(&mut c, &root, SeriesLabelPosition::UpperRight)
}

/// SharedHashFile-workload throughput per phase: `offheap bench --json` output vs
/// SharedHashFile's published figures.
pub fn throughput(json: &Path, out: &Path) -> Result<(), String> {
    let r = bench_result(&read(json)?)?;
    let ours: Vec<f64> = PHASES
        .iter()
        .map(|ph| {
            r["phases"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["phase"] == *ph))
                .and_then(|p| p["mops"].as_f64())
                .ok_or(format!("no figure for phase {ph}"))
        })
        .collect::<Result<_, _>>()?;
    let caption = format!(
        "SharedHashFile workload: {} procs, {}M keys, {} B keys / {} B values",
        r["procs"],
        r["keys"].as_f64().unwrap_or(0.0) / 1e6,
        r["key_size"],
        r["value_size"]
    );
    let bars: Vec<Bar> = (0..PHASES.len())
        .flat_map(|i| {
            [
                (i as f64 - 0.2, 0.38, ours[i], 0),
                (i as f64 + 0.2, 0.38, SHF_MOPS[i], 1),
            ]
        })
        .collect();
    bar_chart(
        out,
        &caption,
        "M ops/s (all workers)",
        &PHASES,
        &[
            ("offheap SharedMap (measured)", OURS),
            ("SharedHashFile (published)", PEER),
        ],
        &bars,
    )
}

/// The `peak_b_per_entry` row of swiss_big's printed table: (offheap-swiss, hashbrown).
/// The columns are found by the header row (`row offheap [offheap_4k] hashbrown ...`);
/// ours is the default's run (`offheap_4k`, 4 KiB pages) when there is one.
pub fn swiss_big_peak(text: &str) -> Result<(f64, f64), String> {
    let mut cols: Vec<&str> = vec!["row", "offheap", "hashbrown"];
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"row") {
            cols = f.clone();
        }
        if f.first() == Some(&"peak_b_per_entry") {
            let at = |name: &str| cols.iter().position(|c| *c == name);
            let ours = at("offheap_4k").or_else(|| at("offheap"));
            let (Some(o), Some(h)) = (ours, at("hashbrown")) else {
                return Err("swiss_big's table has no offheap or hashbrown column".into());
            };
            let n = |j: usize| {
                f.get(j)
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or(format!("peak_b_per_entry: column {j} is not a number"))
            };
            return Ok((n(o)?, n(h)?));
        }
    }
    Err("no peak_b_per_entry row (the printed output of swiss_big)".into())
}

/// Memory per entry: the SharedMap file and its region in use (from `offheap bench --json`),
/// SharedHashFile's published 45.7 B/pair, and the peak RSS per entry of offheap-swiss and
/// hashbrown (u64 keys and values) from swiss_big's printed output.
pub fn memory(json: &Path, swiss_big: &Path, out: &Path) -> Result<(), String> {
    let r = bench_result(&read(json)?)?;
    let (swiss, hb) = swiss_big_peak(&read(swiss_big)?)?;
    let f = |k: &str| r[k].as_f64().ok_or(format!("no {k} in the bench result"));
    let labels = [
        "SharedMap file",
        "SharedMap in use",
        "SharedHashFile",
        "offheap-swiss",
        "hashbrown",
    ];
    let v = [
        f("file_bytes_per_pair")?,
        f("in_use_bytes_per_pair")?,
        SHF_BYTES_PER_PAIR,
        swiss,
        hb,
    ];
    // Series of each bar: ours measured, SharedHashFile published, hashbrown measured.
    let owner = [0, 0, 1, 0, 2];
    let bars: Vec<Bar> = (0..v.len())
        .map(|i| (i as f64, 0.6, v[i], owner[i]))
        .collect();
    bar_chart(
        out,
        "Bytes per entry (SharedMap: 4 B keys / 4 B values; swiss tables: u64/u64 peak RSS)",
        "bytes per entry",
        &labels,
        &[
            ("offheap (measured)", OURS),
            ("SharedHashFile (published)", PEER),
            ("hashbrown (measured)", OTHER),
        ],
        &bars,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inputs() {
        let csv = "inserted,offheap_worst_cpu_ns,offheap_worst_wall_ns,hashbrown_worst_cpu_ns,hashbrown_worst_wall_ns\n10,100,120,5000,6000\n20,110,130,90,95\n";
        let r = latency_rows(csv).unwrap();
        assert_eq!(r, vec![(10.0, 100.0, 5000.0), (20.0, 110.0, 90.0)]);
        assert!(latency_rows("a,b\n1,2\n").is_err());
        // With both runs of ours, the default's (4 KiB pages) is the one plotted.
        let both = "inserted,offheap_worst_cpu_ns,offheap_worst_wall_ns,hashbrown_worst_cpu_ns,hashbrown_worst_wall_ns,offheap_4k_worst_cpu_ns,offheap_4k_worst_wall_ns\n10,100,120,5000,6000,7,8\n";
        assert_eq!(latency_rows(both).unwrap(), vec![(10.0, 7.0, 5000.0)]);
        let out = "row offheap hashbrown ratio\npeak_b_per_entry 26.9 36.0 0.75\n";
        assert_eq!(swiss_big_peak(out).unwrap(), (26.9, 36.0));
        let three = "row offheap offheap_4k hashbrown ratio ratio_4k\npeak_b_per_entry 23.1 22.9 34.2 0.68 0.67\n";
        assert_eq!(swiss_big_peak(three).unwrap(), (22.9, 34.2));
        assert!(swiss_big_peak("nothing").is_err());
        let j = "{\"type\":\"tick\"}\n{\"type\":\"result\",\"keys\":3}\n";
        assert_eq!(bench_result(j).unwrap()["keys"], 3);
        assert!(bench_result("{\"type\":\"tick\"}").is_err());
    }
}
