//! `callverify analyze FILE.(wav|pcap) -o plot.png`: the eight Goertzel band levels over
//! time, the total level, and the digits found, as the picture an operator looks at when a
//! user says "I pressed # and nothing happened".

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use capture::audio::{Layout, Piece};
use capture::replay::Replay;
use dtmf::{BAND_FREQUENCIES_HZ, Event, Receiver, SAMPLE_RATE, WINDOW_HOP, WINDOW_LEN};

use crate::audio::{self, InputFormat};
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
a key are shaded and labelled with the key; dashed verticals mark reported digits.

The input is read in pieces, so any length can be drawn in little memory: beyond four
points per pixel column the levels are drawn as the loudest of each group of windows,
nearby gaps merge into one grey span, and beyond 2000 keys the rest are counted in the
summary rather than drawn."##;

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
    #[error(transparent)]
    Audio(#[from] audio::AudioError),
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
    /// The band levels, decimated to the picture's resolution.
    series: Series,
    /// Sample ranges with no audio (lost, paused), nearby ones merged.
    gaps: Spans,
    /// Sample count of the timeline.
    len: u64,
    /// Key held by the Goertzel receiver: key and sample range.
    held: Marks<(char, Range<u64>)>,
    /// Digits reported by the receive path: key, method, time in seconds.
    reported: Marks<(char, &'static str, f64)>,
    /// A line under the title (what was found).
    note: String,
    /// What time zero is.
    time_axis: &'static str,
}

/// Points kept per pixel column of the picture before neighbours are merged.
const POINTS_PER_PIXEL: usize = 4;
/// Gaps and keys drawn at most (a picture cannot show more; the rest are counted).
const MAX_SPANS: usize = 4096;
const MAX_MARKS: usize = 2000;

/// One plotted point: the loudest level of each band over a run of windows.
#[derive(Clone, Copy, Debug)]
struct Point {
    /// Start of its first and last window, samples.
    first: u64,
    last: u64,
    band_dbm0: [f32; 8],
    total_dbm0: f32,
}

/// The band levels of every window, merged in groups (of a power of two) as they stream in
/// so that at most `max` points are kept.
struct Series {
    points: Vec<Point>,
    /// Windows per group.
    group: u64,
    max: usize,
}

impl Series {
    fn new(max: usize) -> Series {
        Series {
            points: Vec::new(),
            group: 1,
            max: max.max(2),
        }
    }

    fn push(&mut self, w: &dtmf::WindowReport) {
        let slot = |start: u64, group: u64| start / WINDOW_HOP as u64 / group;
        let point = Point {
            first: w.start,
            last: w.start,
            band_dbm0: w.band_dbm0,
            total_dbm0: w.total_dbm0,
        };
        match self.points.last_mut() {
            Some(p) if slot(p.first, self.group) == slot(w.start, self.group) => merge(p, &point),
            _ => self.points.push(point),
        }
        if self.points.len() > self.max {
            self.group *= 2;
            let group = self.group;
            let mut merged: Vec<Point> = Vec::with_capacity(self.max);
            for p in self.points.drain(..) {
                match merged.last_mut() {
                    Some(m) if slot(m.first, group) == slot(p.first, group) => merge(m, &p),
                    _ => merged.push(p),
                }
            }
            self.points = merged;
        }
    }

    /// Runs of points with no missing window between them (a gap breaks the line).
    fn segments(&self) -> Vec<&[Point]> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=self.points.len() {
            let broken = i == self.points.len()
                || self.points[i].first > self.points[i - 1].last + WINDOW_HOP as u64;
            if broken {
                if i > start {
                    out.push(&self.points[start..i]);
                }
                start = i;
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

fn merge(into: &mut Point, p: &Point) {
    into.last = into.last.max(p.last);
    for (a, b) in into.band_dbm0.iter_mut().zip(p.band_dbm0) {
        *a = a.max(b);
    }
    into.total_dbm0 = into.total_dbm0.max(p.total_dbm0);
}

/// Gaps, merged with their neighbours when too many to draw: the distance under which two
/// merge doubles until they fit in [`MAX_SPANS`].
struct Spans {
    spans: Vec<Range<u64>>,
    merge_within: u64,
}

impl Spans {
    fn new() -> Spans {
        Spans {
            spans: Vec::new(),
            merge_within: 0,
        }
    }

    fn push(&mut self, span: Range<u64>) {
        match self.spans.last_mut() {
            Some(last) if span.start <= last.end + self.merge_within => last.end = span.end,
            _ => self.spans.push(span),
        }
        while self.spans.len() > MAX_SPANS {
            self.merge_within = (self.merge_within * 2).max(WINDOW_HOP as u64);
            let within = self.merge_within;
            let mut merged: Vec<Range<u64>> = Vec::new();
            for s in self.spans.drain(..) {
                match merged.last_mut() {
                    Some(last) if s.start <= last.end + within => last.end = s.end,
                    _ => merged.push(s),
                }
            }
            self.spans = merged;
        }
    }
}

/// Marks kept up to [`MAX_MARKS`], the rest counted.
struct Marks<T> {
    kept: Vec<T>,
    more: u64,
}

impl<T> Marks<T> {
    fn new() -> Marks<T> {
        Marks {
            kept: Vec::new(),
            more: 0,
        }
    }

    fn push(&mut self, mark: T) {
        if self.kept.len() < MAX_MARKS {
            self.kept.push(mark);
        } else {
            self.more += 1;
        }
    }
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
    let read = |source| AnalyzeError::Read {
        path: args.file.clone(),
        source,
    };
    let mut magic = [0u8; 4];
    let got = {
        use std::io::Read;
        let mut file = std::fs::File::open(&args.file).map_err(read)?;
        let mut got = 0;
        while got < magic.len() {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read(e)),
            }
        }
        got
    };
    let max_points = args.width as usize * POINTS_PER_PIXEL;
    let analysis = if capture::is_capture(&magic[..got]) {
        from_capture(&args.file, args.stream, max_points)?
    } else {
        from_wav(&args.file, max_points)?
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

fn from_wav(path: &Path, max_points: usize) -> Result<Analysis, AnalyzeError> {
    let mut plot = Plotter::new(max_points);
    audio::stream(path, InputFormat::Wav, |samples| plot.samples(samples))?;
    let mut a = plot.finish();
    a.title = file_name(path);
    for (key, r) in &a.held.kept {
        a.reported
            .push((*key, "inband", r.start as f64 / f64::from(SAMPLE_RATE)));
    }
    a.reported.more = a.held.more;
    a.note = digits_note(&a.reported);
    Ok(a)
}

fn from_capture(
    path: &Path,
    chosen: Option<usize>,
    max_points: usize,
) -> Result<Analysis, AnalyzeError> {
    let read = |source| AnalyzeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut scanner = capture::Scanner::new();
    super::replay::read_in_pieces(path, |piece| scanner.push(piece)).map_err(read)?;
    let capture = scanner.finish();
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
            .position(|s| s.audio_ssrc().is_some())
            .or((!capture.streams.is_empty()).then_some(0))
            .ok_or_else(|| AnalyzeError::NoStreams {
                path: path.to_path_buf(),
            })?,
    };
    let stream = &capture.streams[index];
    let mut layout = Layout::new(stream);
    let mut plot = Plotter::new(max_points);
    let mut replay = Replay::only(&capture, Instant::now(), index);
    super::replay::read_in_pieces(path, |piece| {
        replay.push_observed(piece, |_, d, h| {
            if let Some(layout) = layout.as_mut() {
                layout.packet(d.at_ns, &d.payload, h, |p| plot.piece(p));
            }
        })
    })
    .map_err(read)?;
    let replays = replay.finish();
    let mut reported = Marks::new();
    for r in &replays {
        for d in &r.digits {
            reported.push((d.digit.as_char(), d.method.as_str(), d.at_ns as f64 / 1e9));
        }
        reported.more += r.unlisted;
    }
    let mut codecs: Vec<String> = stream
        .payload_types
        .iter()
        .map(|p| format!("{} {}", p.pt, p.encoding))
        .collect();
    if codecs.is_empty() {
        codecs.push("SIP INFO only".to_string());
    }
    let mut a = match layout.as_mut() {
        Some(layout) if layout.start_ns().is_some() => {
            layout.finish(|p| plot.piece(p));
            let mut a = plot.finish();
            a.offset_s = layout.start_ns().unwrap_or(0) as f64 / 1e9;
            a.note = format!("ssrc 0x{:08x}, ", layout.ssrc());
            a
        }
        _ => Analysis {
            offset_s: stream.first_ns as f64 / 1e9,
            note: "no G.711 audio in this stream, ".to_string(),
            time_axis: "",
            ..Plotter::new(max_points).finish()
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

fn digits_note(reported: &Marks<(char, &'static str, f64)>) -> String {
    if reported.kept.is_empty() {
        return "no digits".to_string();
    }
    let keys: String = reported.kept.iter().map(|(k, ..)| *k).collect();
    let mut methods: Vec<&str> = reported.kept.iter().map(|(_, m, _)| *m).collect();
    methods.dedup();
    let more = if reported.more > 0 {
        format!(" and {} more", reported.more)
    } else {
        String::new()
    };
    format!("digits {keys}{more} ({})", methods.join(", "))
}

/// A Goertzel receiver over the timeline, keeping the decimated windows, gaps and held keys.
struct Plotter {
    rx: Receiver,
    series: Series,
    gaps: Spans,
    held: Marks<(char, Range<u64>)>,
}

impl Plotter {
    fn new(max_points: usize) -> Plotter {
        Plotter {
            rx: Receiver::new(),
            series: Series::new(max_points),
            gaps: Spans::new(),
            held: Marks::new(),
        }
    }

    fn samples(&mut self, samples: &[i16]) {
        let Plotter {
            rx, series, held, ..
        } = self;
        rx.process_with_windows(samples, |e| on_held(held, e), |w| series.push(w));
    }

    fn piece(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Samples(s) => self.samples(s),
            Piece::Gap(n) => {
                let at = self.rx.position();
                self.gaps.push(at..at + n);
                let held = &mut self.held;
                self.rx.fill_in(n, |e| on_held(held, e));
            }
        }
    }

    fn finish(mut self) -> Analysis {
        let held = &mut self.held;
        self.rx.finish(|e| on_held(held, e));
        Analysis {
            title: String::new(),
            offset_s: 0.0,
            series: self.series,
            gaps: self.gaps,
            len: self.rx.position(),
            held: self.held,
            reported: Marks::new(),
            note: String::new(),
            time_axis: "time, s (from the start of the audio)",
        }
    }
}

fn on_held(held: &mut Marks<(char, Range<u64>)>, e: Event) {
    if let Event::End {
        digit, start, end, ..
    } = e
    {
        held.push((digit.as_char(), start..end));
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
    // Window centre: the level a window reports belongs to its middle (a merged point's, to
    // the middle of its windows).
    let centre = |p: &Point| t((p.first + p.last) / 2 + WINDOW_LEN as u64 / 2);
    let last_report = a.reported.kept.iter().map(|r| r.2).fold(f64::MIN, f64::max);
    let first_report = a.reported.kept.iter().map(|r| r.2).fold(f64::MAX, f64::min);
    // Without audio the picture spans the digits, with some room either side.
    let x_start = if a.series.is_empty() {
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
        for segment in a.series.segments() {
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
    let x_span = x_range.end - x_range.start;
    let seconds_per_pixel =
        (x_range.end - x_range.start) / f64::from(size.0.saturating_sub(100).max(1));
    mark_reported(&mut bands, a, seconds_per_pixel, x_span)?;

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
        .draw_series(sparse(&a.held.kept, seconds_per_pixel, &t).map(|(key, r)| {
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
    for segment in a.series.segments() {
        let points = segment.iter().map(|w| (centre(w), level(w.total_dbm0)));
        total
            .draw_series(LineSeries::new(points, BLACK.stroke_width(1)))
            .map_err(|e| e.to_string())?;
    }
    for (_, _, at) in &a.reported.kept {
        total
            .draw_series(DashedLineSeries::new(
                [(*at, FLOOR_DBM0), (*at, CEILING_DBM0)],
                5,
                3,
                BLACK.stroke_width(mark_stroke(a, seconds_per_pixel, x_span)),
            ))
            .map_err(|e| e.to_string())?;
    }
    if a.series.is_empty() {
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
        .draw_series(a.gaps.spans.iter().map(|g| {
            Rectangle::new(
                [(t(g.start), y.start), (t(g.end), y.end)],
                RGBColor(200, 200, 200).mix(0.5).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(a.held.kept.iter().map(|(_, r)| {
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
    x_span: f64,
) -> Result<(), String> {
    const ROWS: [f64; 3] = [CEILING_DBM0 + 11.0, CEILING_DBM0 + 7.0, CEILING_DBM0 + 3.0];
    let mut row_end = [f64::MIN; 3];
    let stroke = mark_stroke(a, seconds_per_pixel, x_span);
    for (key, method, at) in &a.reported.kept {
        chart
            .draw_series(DashedLineSeries::new(
                [(*at, FLOOR_DBM0), (*at, CEILING_DBM0)],
                5,
                3,
                BLACK.stroke_width(stroke),
            ))
            .map_err(|e| e.to_string())?;
        let text = format!("{key} {method}");
        // About 8 px per character at 15 px DejaVu Sans.
        let width = (8 * text.len() + 6) as f64 * seconds_per_pixel;
        // No free row: the label is left out (the line still marks the digit).
        let Some(row) = (0..ROWS.len()).find(|&r| row_end[r] <= *at) else {
            continue;
        };
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

/// Width of the digit lines: 2 px, or 1 px when they are closer than 6 px on average.
fn mark_stroke(a: &Analysis, seconds_per_pixel: f64, span_s: f64) -> u32 {
    if (a.reported.kept.len() as f64) * 6.0 * seconds_per_pixel > span_s {
        1
    } else {
        2
    }
}

/// The held keys whose labels do not run into the previous one (18 px per label).
fn sparse<'a>(
    held: &'a [(char, Range<u64>)],
    seconds_per_pixel: f64,
    t: &'a dyn Fn(u64) -> f64,
) -> impl Iterator<Item = &'a (char, Range<u64>)> {
    let mut free_from = f64::MIN;
    held.iter().filter(move |(_, r)| {
        let at = t(r.start);
        let fits = at >= free_from;
        if fits {
            free_from = at + 18.0 * seconds_per_pixel;
        }
        fits
    })
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
