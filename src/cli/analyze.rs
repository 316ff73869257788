//! `callverify analyze FILE.(wav|pcap) -o plot.png`: the eight Goertzel band levels over
//! time, the total level, and the digits found, as the picture an operator looks at when a
//! user says "I pressed # and nothing happened".

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use capture::audio::{Piece, StreamAudio};
use dtmf::{BAND_FREQUENCIES_HZ, Event, Receiver, SAMPLE_RATE, WINDOW_HOP, WINDOW_LEN};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The long help of the command (the summary line comes from `cli::mod`).
const HELP: &str = r##"For a WAV file (any format; resampled to 8 kHz mono) the audio is fed to the Goertzel
receiver as it is. For a pcap/pcapng capture one stream is drawn — --stream N (numbered as
`callverify replay` lists them), by default the first with G.711 audio: its audio is laid
out on its RTP timeline (lost packets and pauses left blank, shaded grey) and the digits
marked are those the live receive path reports for the stream, by any method (in-band,
RFC 4733, SIP INFO), at the time it reported them.

The picture: top, the level each of the eight bands sees (dBm0; low group 697–941 Hz in
warm colours, high group 1209–1633 Hz in cool colours) with the receiver's minimum tone
level dashed; bottom, the total level of the audio. Spans where the Goertzel receiver held
a key are shaded and labelled with the key; dashed verticals mark reported digits."##;

/// Plot the band levels the DTMF receiver sees in a WAV file or a captured call.
#[derive(Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub struct Args {
    /// A WAV file, or a pcap/pcapng capture.
    file: PathBuf,
    /// The PNG file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// For a capture: the stream to draw, 1-based as `callverify replay` numbers them.
    #[arg(long)]
    stream: Option<usize>,
    /// Picture width, pixels.
    #[arg(long, default_value_t = 1600)]
    width: u32,
    /// Picture height, pixels.
    #[arg(long, default_value_t = 900)]
    height: u32,
}

/// Lowest level drawn, dBm0 (anything quieter sits on the floor).
const FLOOR_DBM0: f64 = -70.0;
/// Highest level drawn, dBm0 (G.711 full scale is +3.14 dBm0).
const CEILING_DBM0: f64 = 5.0;
/// Smallest and largest picture, pixels.
const MIN_SIZE: (u32, u32) = (400, 300);
const MAX_SIZE: (u32, u32) = (10_000, 4_000);
/// Font family name the embedded DejaVu Sans is registered under.
const FONT: &str = "sans-serif";

/// Colours of the bands: rows warm, columns cool (Tableau 10).
const BAND_COLOURS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(188, 189, 34),
    RGBColor(140, 86, 75),
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

#[derive(Debug, thiserror::Error)]
enum AnalyzeError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Wav {
        path: PathBuf,
        source: media::wav::WavError,
    },
    #[error("{}: {source}", path.display())]
    Capture {
        path: PathBuf,
        source: capture::CaptureError,
    },
    #[error("{}: no stream {n} (the capture has {count})", path.display())]
    NoSuchStream {
        path: PathBuf,
        n: usize,
        count: usize,
    },
    #[error("{}: no RTP stream and no SIP INFO key press in the capture", path.display())]
    NoStreams { path: PathBuf },
    #[error("picture size {0}x{1} is outside 400x300..10000x4000")]
    Size(u32, u32),
    #[error("cannot draw {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

/// What is drawn.
struct Analysis {
    title: String,
    /// Seconds of the first sample on the x axis.
    offset_s: f64,
    windows: Vec<dtmf::WindowReport>,
    /// Sample ranges with no audio (lost, paused).
    gaps: Vec<Range<u64>>,
    /// Sample count of the timeline.
    len: u64,
    /// Key held by the Goertzel receiver: key and sample range.
    held: Vec<(char, Range<u64>)>,
    /// Digits reported by the receive path: key, method, time in seconds.
    reported: Vec<(char, &'static str, f64)>,
    /// A line under the title (what was found).
    note: String,
    /// What time zero is.
    time_axis: &'static str,
}

pub fn run(args: Args) -> ExitCode {
    match analyze(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callverify analyze: {e}");
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}

fn analyze(args: &Args) -> Result<String, AnalyzeError> {
    if !(MIN_SIZE.0..=MAX_SIZE.0).contains(&args.width)
        || !(MIN_SIZE.1..=MAX_SIZE.1).contains(&args.height)
    {
        return Err(AnalyzeError::Size(args.width, args.height));
    }
    let bytes = std::fs::read(&args.file).map_err(|source| AnalyzeError::Read {
        path: args.file.clone(),
        source,
    })?;
    let is_capture = bytes.len() >= 4
        && matches!(
            u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            0xa1b2_c3d4
                | 0xd4c3_b2a1
                | 0xa1b2_3c4d
                | 0x4d3c_b2a1
                | 0xa1b2_cd34
                | 0x34cd_b2a1
                | 0x0a0d_0d0a
        );
    let analysis = if is_capture {
        from_capture(&args.file, &bytes, args.stream)?
    } else {
        from_wav(&args.file, &bytes)?
    };
    draw(&analysis, &args.output, (args.width, args.height)).map_err(|message| {
        AnalyzeError::Draw {
            path: args.output.clone(),
            message,
        }
    })?;
    Ok(format!(
        "{}: {} -> {}",
        analysis.title,
        analysis.note,
        args.output.display()
    ))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn from_wav(path: &Path, bytes: &[u8]) -> Result<Analysis, AnalyzeError> {
    let samples = media::wav::decode(bytes).map_err(|source| AnalyzeError::Wav {
        path: path.to_path_buf(),
        source,
    })?;
    let audio = StreamAudio {
        ssrc: 0,
        start_ns: 0,
        pieces: vec![Piece::Samples(samples)],
    };
    let mut a = run_receiver(&audio);
    a.title = file_name(path);
    a.reported = a
        .held
        .iter()
        .map(|(key, r)| (*key, "inband", r.start as f64 / f64::from(SAMPLE_RATE)))
        .collect();
    a.note = digits_note(&a.reported);
    Ok(a)
}

fn from_capture(
    path: &Path,
    bytes: &[u8],
    chosen: Option<usize>,
) -> Result<Analysis, AnalyzeError> {
    let capture = capture::read(bytes);
    if let Some(source) = &capture.error
        && capture.streams.is_empty()
    {
        return Err(AnalyzeError::Capture {
            path: path.to_path_buf(),
            source: source.clone(),
        });
    }
    let index = match chosen {
        Some(n) if n == 0 || n > capture.streams.len() => {
            return Err(AnalyzeError::NoSuchStream {
                path: path.to_path_buf(),
                n,
                count: capture.streams.len(),
            });
        }
        Some(n) => n - 1,
        // The first stream with G.711 audio, else the first stream (its digits still show).
        None => capture
            .streams
            .iter()
            .position(|s| capture::audio::decode(&capture, s).is_some())
            .or((!capture.streams.is_empty()).then_some(0))
            .ok_or_else(|| AnalyzeError::NoStreams {
                path: path.to_path_buf(),
            })?,
    };
    let stream = &capture.streams[index];
    let base = Instant::now();
    let replay = capture::replay::replay_stream(&capture, stream, base);
    let reported: Vec<(char, &'static str, f64)> = replay
        .digits
        .iter()
        .map(|d| (d.digit.as_char(), d.method.as_str(), d.at_ns as f64 / 1e9))
        .collect();
    let mut codecs: Vec<String> = stream
        .payload_types
        .iter()
        .map(|p| format!("{} {}", p.pt, p.encoding))
        .collect();
    if codecs.is_empty() {
        codecs.push("SIP INFO only".to_string());
    }
    let mut a = match capture::audio::decode(&capture, stream) {
        Some(audio) => {
            let mut a = run_receiver(&audio);
            a.offset_s = audio.start_ns as f64 / 1e9;
            a.note = format!("ssrc 0x{:08x}, ", audio.ssrc);
            a
        }
        None => Analysis {
            title: String::new(),
            offset_s: stream.first_ns as f64 / 1e9,
            windows: Vec::new(),
            gaps: Vec::new(),
            len: 0,
            held: Vec::new(),
            reported: Vec::new(),
            note: "no G.711 audio in this stream, ".to_string(),
            time_axis: "",
        },
    };
    a.title = format!(
        "{}  stream {}: {} ({})",
        file_name(path),
        index + 1,
        stream.name(),
        codecs.join(", ")
    );
    a.note.push_str(&digits_note(&reported));
    a.reported = reported;
    a.time_axis = "time, s (from the first packet of the capture)";
    if let Some(e) = &capture.error {
        a.note.push_str(&format!("; capture incomplete: {e}"));
    }
    Ok(a)
}

fn digits_note(reported: &[(char, &'static str, f64)]) -> String {
    if reported.is_empty() {
        return "no digits".to_string();
    }
    let keys: String = reported.iter().map(|(k, ..)| *k).collect();
    let mut methods: Vec<&str> = reported.iter().map(|(_, m, _)| *m).collect();
    methods.dedup();
    format!("digits {keys} ({})", methods.join(", "))
}

/// Runs a Goertzel receiver over the timeline, keeping every window and the held keys.
fn run_receiver(audio: &StreamAudio) -> Analysis {
    let mut rx = Receiver::new();
    let mut windows = Vec::new();
    let mut gaps = Vec::new();
    let mut held = Vec::new();
    let mut on_event = |e: Event| {
        if let Event::End {
            digit, start, end, ..
        } = e
        {
            held.push((digit.as_char(), start..end));
        }
    };
    for piece in &audio.pieces {
        match piece {
            Piece::Samples(s) => {
                rx.process_with_windows(s, &mut on_event, |w| windows.push(*w));
            }
            Piece::Gap(n) => {
                let at = rx.position();
                gaps.push(at..at + n);
                rx.fill_in(*n, &mut on_event);
            }
        }
    }
    rx.finish(&mut on_event);
    Analysis {
        title: String::new(),
        offset_s: 0.0,
        windows,
        gaps,
        len: audio.len(),
        held,
        reported: Vec::new(),
        note: String::new(),
        time_axis: "time, s (from the start of the audio)",
    }
}

fn draw(a: &Analysis, output: &Path, size: (u32, u32)) -> Result<(), String> {
    // Registering the same static font twice is harmless; failure means a corrupt font.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font does not load".to_string())?;
    plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
        .map_err(|_| "the embedded font does not load".to_string())?;
    let root = BitMapBackend::new(output, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rate = f64::from(SAMPLE_RATE);
    let t = |samples: u64| a.offset_s + samples as f64 / rate;
    // Window centre: the level a window reports belongs to its middle.
    let centre = |w: &dtmf::WindowReport| t(w.start + WINDOW_LEN as u64 / 2);
    let last_report = a.reported.iter().map(|r| r.2).fold(f64::MIN, f64::max);
    let first_report = a.reported.iter().map(|r| r.2).fold(f64::MAX, f64::min);
    // Without audio the picture spans the digits, with some room either side.
    let x_start = if a.windows.is_empty() {
        a.offset_s.min(first_report - 0.25).max(0.0)
    } else {
        a.offset_s
    };
    let x_end = t(a.len).max(last_report + 0.25).max(x_start + 0.5);
    let x_range = x_start..x_end;

    let (header, body) = root.split_vertically(HEADER_HEIGHT);
    header
        .draw(&Text::new(
            a.title.clone(),
            (16, 8),
            (FONT, 22).into_font().style(FontStyle::Bold),
        ))
        .map_err(|e| e.to_string())?;
    header
        .draw(&Text::new(a.note.clone(), (16, 38), (FONT, 17).into_font()))
        .map_err(|e| e.to_string())?;
    draw_legend(&header)?;
    let (bands_area, total_area) =
        body.split_vertically((body.dim_in_pixel().1 as f64 * 0.70) as u32);

    let mut bands = ChartBuilder::on(&bands_area)
        .margin_left(10)
        .margin_right(24)
        .margin_top(8)
        .x_label_area_size(24)
        .y_label_area_size(64)
        .build_cartesian_2d(
            x_range.clone(),
            FLOOR_DBM0..CEILING_DBM0 + LABEL_HEADROOM_DB,
        )
        .map_err(|e| e.to_string())?;
    bands
        .configure_mesh()
        .y_desc("band level, dBm0")
        .y_labels(10)
        .y_label_formatter(&|y| {
            if *y > CEILING_DBM0 {
                String::new()
            } else {
                format!("{y:.0}")
            }
        })
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| e.to_string())?;
    shade_spans(&mut bands, a, &t, FLOOR_DBM0..CEILING_DBM0)?;
    for (band, colour) in BAND_COLOURS.iter().enumerate() {
        for segment in segments(&a.windows) {
            let points = segment
                .iter()
                .map(|w| (centre(w), level(w.band_dbm0[band])));
            bands
                .draw_series(LineSeries::new(points, colour.stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
    }
    bands
        .draw_series(DashedLineSeries::new(
            [
                (x_range.start, dtmf::MIN_LEVEL_DBM0),
                (x_range.end, dtmf::MIN_LEVEL_DBM0),
            ],
            6,
            4,
            BLACK.mix(0.7).stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    let seconds_per_pixel =
        (x_range.end - x_range.start) / f64::from(size.0.saturating_sub(100).max(1));
    mark_reported(&mut bands, a, seconds_per_pixel)?;

    let mut total = ChartBuilder::on(&total_area)
        .margin_left(10)
        .margin_right(24)
        .margin_bottom(8)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, FLOOR_DBM0..CEILING_DBM0)
        .map_err(|e| e.to_string())?;
    total
        .configure_mesh()
        .x_desc(a.time_axis)
        .y_desc("total, dBm0")
        .y_labels(5)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| e.to_string())?;
    shade_spans(&mut total, a, &t, FLOOR_DBM0..CEILING_DBM0)?;
    total
        .draw_series(a.held.iter().map(|(key, r)| {
            Text::new(
                key.to_string(),
                (t(r.start), CEILING_DBM0 - 2.0),
                (FONT, 18)
                    .into_font()
                    .style(FontStyle::Bold)
                    .color(&RGBColor(150, 110, 0)),
            )
        }))
        .map_err(|e| e.to_string())?;
    for segment in segments(&a.windows) {
        let points = segment.iter().map(|w| (centre(w), level(w.total_dbm0)));
        total
            .draw_series(LineSeries::new(points, BLACK.stroke_width(1)))
            .map_err(|e| e.to_string())?;
    }
    for (_, _, at) in &a.reported {
        total
            .draw_series(DashedLineSeries::new(
                [(*at, FLOOR_DBM0), (*at, CEILING_DBM0)],
                5,
                3,
                BLACK.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
    }
    if a.windows.is_empty() {
        total
            .draw_series(std::iter::once(Text::new(
                "no decodable audio".to_string(),
                (a.offset_s + 0.05, -30.0),
                (FONT, 18).into_font(),
            )))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Height of the title, summary and colour key, pixels (two key rows fit).
const HEADER_HEIGHT: u32 = 108;
/// Room above the ceiling of the band chart for the digit labels, dB of the y axis.
const LABEL_HEADROOM_DB: f64 = 12.0;

/// The colour key, drawn in the header so it never covers the data.
fn draw_legend(
    header: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<(), String> {
    /// Left edge and row height of the key, pixels.
    const LEFT: i32 = 16;
    const ROW: i32 = 20;
    let width = header.dim_in_pixel().0 as i32;
    let style = (FONT, 15).into_font();
    let (mut x, mut y) = (LEFT, 66);
    enum Swatch {
        Line(RGBColor, u32),
        Block(RGBColor),
    }
    let mut items: Vec<(String, Swatch)> = BAND_COLOURS
        .iter()
        .zip(BAND_FREQUENCIES_HZ)
        .map(|(c, f)| (format!("{f:.0} Hz"), Swatch::Line(*c, 4)))
        .collect();
    items.push((
        "receiver minimum per tone".to_string(),
        Swatch::Line(RGBColor(90, 90, 90), 1),
    ));
    items.push((
        "key held (Goertzel)".to_string(),
        Swatch::Block(RGBColor(255, 221, 87)),
    ));
    items.push((
        "no audio".to_string(),
        Swatch::Block(RGBColor(200, 200, 200)),
    ));
    items.push((
        "digit reported by the receive path".to_string(),
        Swatch::Line(BLACK, 2),
    ));
    for (name, swatch) in items {
        // About 8 px per character at 15 px DejaVu Sans, plus the swatch.
        let item = 36 + 8 * name.len() as i32;
        if x + item > width && x > LEFT {
            x = LEFT;
            y += ROW;
        }
        match swatch {
            Swatch::Line(colour, w) => header.draw(&PathElement::new(
                [(x, y), (x + 22, y)],
                colour.stroke_width(w),
            )),
            Swatch::Block(colour) => header.draw(&Rectangle::new(
                [(x, y - 7), (x + 22, y + 7)],
                colour.mix(0.6).filled(),
            )),
        }
        .map_err(|e| e.to_string())?;
        header
            .draw(&Text::new(name, (x + 27, y - 8), style.clone()))
            .map_err(|e| e.to_string())?;
        x += item;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Shades the gaps grey and the spans where the Goertzel receiver held a key yellow.
fn shade_spans(
    chart: &mut Chart<'_, '_>,
    a: &Analysis,
    t: &dyn Fn(u64) -> f64,
    y: Range<f64>,
) -> Result<(), String> {
    chart
        .draw_series(a.gaps.iter().map(|g| {
            Rectangle::new(
                [(t(g.start), y.start), (t(g.end), y.end)],
                RGBColor(200, 200, 200).mix(0.5).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(a.held.iter().map(|(_, r)| {
            Rectangle::new(
                [(t(r.start), y.start), (t(r.end), y.end)],
                RGBColor(255, 221, 87).mix(0.4).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Dashed verticals at the digits the receive path reported, labelled with key and method
/// above the levels; labels that would collide go to a second and third row.
fn mark_reported(
    chart: &mut Chart<'_, '_>,
    a: &Analysis,
    seconds_per_pixel: f64,
) -> Result<(), String> {
    const ROWS: [f64; 3] = [CEILING_DBM0 + 11.0, CEILING_DBM0 + 7.0, CEILING_DBM0 + 3.0];
    let mut row_end = [f64::MIN; 3];
    for (key, method, at) in &a.reported {
        chart
            .draw_series(DashedLineSeries::new(
                [(*at, FLOOR_DBM0), (*at, CEILING_DBM0)],
                5,
                3,
                BLACK.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        let text = format!("{key} {method}");
        // About 8 px per character at 15 px DejaVu Sans.
        let width = (8 * text.len() + 6) as f64 * seconds_per_pixel;
        let row = (0..ROWS.len()).find(|&r| row_end[r] <= *at).unwrap_or(0);
        row_end[row] = at + width;
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (*at, ROWS[row]),
                (FONT, 15).into_font().style(FontStyle::Bold),
            )))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A level as drawn: clamped to the picture, NaN and -inf on the floor.
fn level(dbm0: f32) -> f64 {
    let v = f64::from(dbm0);
    if v.is_nan() {
        FLOOR_DBM0
    } else {
        v.clamp(FLOOR_DBM0, CEILING_DBM0)
    }
}

/// Runs of contiguous windows (a gap breaks the line).
fn segments(windows: &[dtmf::WindowReport]) -> Vec<&[dtmf::WindowReport]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=windows.len() {
        let broken =
            i == windows.len() || windows[i].start != windows[i - 1].start + WINDOW_HOP as u64;
        if broken {
            if i > start {
                out.push(&windows[start..i]);
            }
            start = i;
        }
    }
    out
}
