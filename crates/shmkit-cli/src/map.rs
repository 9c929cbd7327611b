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
    /// Also write the picture, region by region, as an SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Never color the strip (the default colors it on a terminal).
    #[arg(long)]
    no_color: bool,
}

/// Fraction of each of `cells` equal slices of `[start, end)` in use.
fn cell_fill(regions: &[Region], start: u64, end: u64, cells: usize) -> Vec<f64> {
    let span = (end - start).max(1) as f64;
    let mut used = vec![0f64; cells];
    let mut total = vec![0f64; cells];
    let cell_len = span / cells as f64;
    for region in regions {
        // Spread the region's bytes, and its used share, over the cells it covers.
        let density = region.used as f64 / region.len.max(1) as f64;
        let from = (region.offset.saturating_sub(start)) as f64;
        let to = from + region.len as f64;
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
    let end = segment.size().max(start + 1);
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
    let cells = (args.width * args.rows).max(1);
    let fill = cell_fill(&regions, start, end, cells);
    let color = !args.no_color && std::io::stdout().is_terminal();
    let per_cell = (end - start).div_ceil(cells as u64);
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
        println!("wrote {}", path.display());
    }
    Ok(if walk.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::inspect::EXIT_INCONSISTENT)
    })
}

/// The regions as rows of rectangles (one row per 1/16 of the data area),
/// green in proportion to their use, with a title and a legend.
fn svg(regions: &[Region], start: u64, end: u64, name: &str, kind: &str) -> String {
    const WIDTH: f64 = 1024.0;
    const ROW: f64 = 24.0;
    const ROWS: u64 = 16;
    let span = (end - start).max(1);
    let row_bytes = span.div_ceil(ROWS);
    let mut out = String::new();
    let height = 60.0 + ROWS as f64 * (ROW + 4.0) + 30.0;
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"13\">\n",
        WIDTH + 40.0
    ));
    out.push_str(&format!(
        "<text x=\"20\" y=\"24\">/{} ({kind} allocator): {} data area, {} per row</text>\n",
        xml_escape(name),
        format_bytes(span),
        format_bytes(row_bytes)
    ));
    for region in regions {
        let mut offset = region.offset.max(start);
        let region_end = (region.offset + region.len).min(end);
        let fill = region.used as f64 / region.len.max(1) as f64;
        let shade = format!(
            "rgb({},{},{})",
            (230.0 - 190.0 * fill) as u8,
            (230.0 - 60.0 * fill) as u8,
            (230.0 - 190.0 * fill) as u8
        );
        // A region may wrap over several rows.
        while offset < region_end {
            let row = (offset - start) / row_bytes;
            let row_end = (start + (row + 1) * row_bytes).min(region_end);
            let x = 20.0 + WIDTH * ((offset - start) % row_bytes) as f64 / row_bytes as f64;
            let w = (WIDTH * (row_end - offset) as f64 / row_bytes as f64).max(0.5);
            let y = 40.0 + row as f64 * (ROW + 4.0);
            out.push_str(&format!(
                "<rect x=\"{x:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{ROW}\" fill=\"{shade}\" \
                 stroke=\"#555\" stroke-width=\"0.3\"><title>offset {} length {} used {}</title></rect>\n",
                region.offset, region.len, region.used
            ));
            offset = row_end;
        }
    }
    out.push_str(&format!(
        "<text x=\"20\" y=\"{:.1}\">green: in use (darker = fuller); light: free. Hover a block for its offset.</text>\n",
        height - 14.0
    ));
    out.push_str("</svg>\n");
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
