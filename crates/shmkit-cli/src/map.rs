//! `shmkit map`: a picture of a segment's data area, region by region, as a
//! terminal strip and, on request, an SVG file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use shmkit::Region;

use crate::inspect::open;
use crate::units::format_bytes;

#[derive(Args)]
pub struct MapArgs {
    /// The segment's shared-memory name.
    name: String,
    /// Cells in the terminal strip.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Rows of the strip.
    #[arg(long, default_value_t = 8)]
    rows: usize,
    /// Also write the picture as an SVG file (an offset axis, a legend, and
    /// a pixel's resolution, so scattered free space shows as such).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// When to colour the strip: auto (on a terminal, unless NO_COLOR is
    /// set), always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// The same as `--color never`.
    #[arg(long)]
    no_color: bool,
    /// Print the regions as JSON instead of the strip.
    #[arg(short, long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour output written to stdout (`NO_COLOR`, when set
    /// and not empty, turns `auto` off: https://no-color.org).
    fn for_stdout(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stdout().is_terminal()
            }
        }
    }
}

/// Fraction of each of `cells` equal slices of `[start, end)` in use.
fn cell_fill(regions: &[Region], start: u64, end: u64, cells: usize) -> Vec<f64> {
    let span = (end - start).max(1) as f64;
    let mut used = vec![0f64; cells];
    let mut total = vec![0f64; cells];
    let cell_len = span / cells as f64;
    for region in regions {
        // Spread the region's bytes, and its used share, over the cells it
        // covers: only its part inside `[start, end)` (a picture row is a
        // slice of the data area).
        let density = region.used as f64 / region.len.max(1) as f64;
        let lo = region.offset.max(start);
        let hi = region.offset.saturating_add(region.len).min(end);
        if hi <= lo {
            continue;
        }
        let from = (lo - start) as f64;
        let to = (hi - start) as f64;
        let first = (from / cell_len) as usize;
        let last = ((to / cell_len).ceil() as usize).min(cells);
        for cell in first..last {
            let lo = (cell as f64 * cell_len).max(from);
            let hi = ((cell + 1) as f64 * cell_len).min(to);
            if hi > lo {
                total[cell] += hi - lo;
                used[cell] += (hi - lo) * density;
            }
        }
    }
    used.iter()
        .zip(&total)
        .map(|(u, t)| if *t > 0.0 { u / t } else { 0.0 })
        .collect()
}

fn glyph(fill: f64) -> char {
    match fill {
        f if f <= 0.0 => '.',
        f if f < 0.34 => '░',
        f if f < 0.67 => '▒',
        f if f < 1.0 => '▓',
        _ => '█',
    }
}

pub fn run(args: &MapArgs) -> Result<ExitCode, String> {
    let heap = open(&args.name)?;
    let mut regions = Vec::new();
    let walk = heap.regions(&mut |region| regions.push(region));
    let detailed = walk.is_ok();
    let segment = heap.segment();
    let start = segment.data_offset();
    // The whole data area, backed or not: unbacked room is free.
    let end = segment.max_size().max(start + 1);
    if !detailed {
        // The walk found an inconsistency: still draw something useful, one
        // used and one free stretch in proportion to the accounting.
        regions.clear();
        let stats = heap.stats();
        let used = (stats.capacity - stats.free_bytes.min(stats.capacity)).min(end - start);
        regions.push(Region {
            offset: start,
            len: used,
            used,
        });
        regions.push(Region {
            offset: start + used,
            len: end - start - used,
            used: 0,
        });
    }
    if args.json {
        let listed: Vec<serde_json::Value> = regions
            .iter()
            .map(|r| serde_json::json!({"offset": r.offset, "len": r.len, "used": r.used}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "name": segment.name(),
                "allocator": heap.kind().to_string(),
                "data_offset": start,
                "size": segment.max_size(),
                // Without a walk, two stretches in proportion to the accounting.
                "walk_error": walk.as_ref().err().map(ToString::to_string),
                "regions": listed,
            })
        );
    }
    // Bounded: a strip is for a terminal.
    let cells = args
        .width
        .checked_mul(args.rows)
        .filter(|&cells| cells <= 1 << 16)
        .ok_or("--width x --rows is over 65536 cells")?
        .max(1);
    let fill = cell_fill(&regions, start, end, cells);
    let color = !args.no_color && args.color.for_stdout();
    let per_cell = (end - start).div_ceil(cells as u64);
    let say = !args.json;
    if say {
        println!(
            "/{} ({} allocator): {} data area from offset {start}, {} per cell{}",
            segment.name(),
            heap.kind(),
            format_bytes(end - start),
            format_bytes(per_cell),
            match &walk {
                Ok(()) => String::new(),
                Err(e) => format!(" (proportional: the region walk failed: {e})"),
            }
        );
        for row in fill.chunks(args.width.max(1)) {
            let line: String = row
                .iter()
                .map(|&f| {
                    let g = glyph(f);
                    match (color, f > 0.0) {
                        (true, true) => format!("\x1b[32m{g}\x1b[0m"),
                        (true, false) => format!("\x1b[2m{g}\x1b[0m"),
                        _ => g.to_string(),
                    }
                })
                .collect();
            println!("|{line}|");
        }
        let used: u64 = regions.iter().map(|r| r.used).sum();
        println!(
            "legend: █ full  ▓ ▒ ░ partly used  . free    {} in use in {} regions",
            format_bytes(used),
            regions.len()
        );
    }
    if let Some(path) = &args.svg {
        std::fs::write(
            path,
            svg(
                &regions,
                start,
                end,
                &segment.name(),
                &heap.kind().to_string(),
            ),
        )
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
        if say {
            println!("wrote {}", path.display());
        }
    }
    Ok(if walk.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::inspect::EXIT_INCONSISTENT)
    })
}

/// Shades of green by use: free, partly used (three steps), full.
const SHADES: [(&str, &str); 5] = [
    ("#e6e6e6", "free"),
    ("#b8dcb8", "under a third used"),
    ("#7cc07c", "under two thirds used"),
    ("#3f9a3f", "over two thirds used"),
    ("#1f6f1f", "full"),
];

fn shade_of(fill: f64) -> usize {
    match fill {
        f if f <= 0.0 => 0,
        f if f < 0.34 => 1,
        f if f < 0.67 => 2,
        f if f < 1.0 => 3,
        _ => 4,
    }
}

/// The data area as 16 rows of one pixel per slice: each pixel shaded by
/// the use of its slice, runs of one shade drawn as one rectangle (so a
/// free list of 18,000 blocks is a few thousand rectangles at most, and a
/// free block among used ones still shows). Each row is labelled with its
/// first offset; a legend shows the shades.
fn svg(regions: &[Region], start: u64, end: u64, name: &str, kind: &str) -> String {
    const LEFT: f64 = 130.0;
    const PIXELS: usize = 1024;
    const ROW: f64 = 24.0;
    const ROWS: u64 = 16;
    let span = (end - start).max(1);
    let row_bytes = span.div_ceil(ROWS);
    let mut out = String::new();
    let legend_y = 50.0 + ROWS as f64 * (ROW + 4.0) + 10.0;
    let height = legend_y + 40.0;
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"12\">\n",
        LEFT + PIXELS as f64 + 20.0
    ));
    out.push_str(&format!(
        "<text x=\"10\" y=\"20\">/{} ({kind} allocator): {} data area, {} per row, {} per \
         pixel</text>\n",
        xml_escape(name),
        format_bytes(span),
        format_bytes(row_bytes),
        format_bytes(row_bytes.div_ceil(PIXELS as u64))
    ));
    out.push_str("<text x=\"10\" y=\"38\" fill=\"#555\">offset</text>\n");
    for row in 0..ROWS {
        let row_start = start + row * row_bytes;
        if row_start >= end {
            break;
        }
        let row_end = (row_start + row_bytes).min(end);
        let y = 44.0 + row as f64 * (ROW + 4.0);
        out.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\">{row_start}</text>\n",
            y + ROW * 0.7
        ));
        let pixels = ((PIXELS as u64 * (row_end - row_start)) / row_bytes).max(1) as usize;
        let fill = cell_fill(regions, row_start, row_end, pixels);
        let mut run_start = 0;
        for pixel in 1..=pixels {
            let shade = shade_of(fill[run_start]);
            if pixel < pixels && shade_of(fill[pixel]) == shade {
                continue;
            }
            let from = row_start + (row_end - row_start) * run_start as u64 / pixels as u64;
            let to = row_start + (row_end - row_start) * pixel as u64 / pixels as u64;
            out.push_str(&format!(
                "<rect x=\"{}\" y=\"{y:.1}\" width=\"{}\" height=\"{ROW}\" fill=\"{}\">\
                 <title>offsets {from}..{to}: {}</title></rect>\n",
                LEFT + run_start as f64,
                pixel - run_start,
                SHADES[shade].0,
                SHADES[shade].1
            ));
            run_start = pixel;
        }
    }
    let mut x = LEFT;
    for (colour, meaning) in SHADES {
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{legend_y}\" width=\"14\" height=\"14\" fill=\"{colour}\" \
             stroke=\"#555\" stroke-width=\"0.5\"/><text x=\"{}\" y=\"{}\">{meaning}</text>\n",
            x + 18.0,
            legend_y + 11.0
        ));
        x += 30.0 + 7.5 * meaning.len() as f64;
    }
    out.push_str("</svg>\n");
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
