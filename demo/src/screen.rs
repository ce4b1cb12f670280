//! The interactive screen of `play`: keys in the terminal drive the player; the screen shows
//! the cursor, each track's spans and buffered stretch on one timeline, a buffer bar per track,
//! the link's figures when remote, and the current caption.
//!
//! The terminal is restored however the program ends: `q`, Ctrl-C (a key in raw mode),
//! SIGINT/SIGTERM (a flag polled by the loop), an error (the guard's `Drop`) or a panic (the
//! panic hook restores it before the message prints).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::Print;
use crossterm::terminal::{self, Clear, ClearType};
use crossterm::{cursor, execute, queue};
use tandem::manifest::TrackKind;
use tandem::player::{Player, PlayerEvent, SeekMode, TrackDesc};
use tandem::MediaTime;

const RATES: [f64; 6] = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0];
const KEYS: &str =
    "space pause | <-/-> 5s | up/down 30s | home/end | [ ] rate | 1-9 tracks | g go to | c captions | q quit";

/// Raw mode and the alternate screen, left when dropped.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard> {
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        let guard = TerminalGuard;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

fn restore_terminal() {
    let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

#[derive(Debug, Default, Clone)]
struct TrackFigures {
    buffered: MediaTime,
    throughput: f64,
    rtt: Duration,
}

/// What the screen shows besides what the player knows.
struct Screen<'a> {
    player: &'a Player,
    remote: bool,
    duration: MediaTime,
    figures: HashMap<Arc<str>, TrackFigures>,
    /// Video tracks the link cannot carry: shown as keyframes only.
    degraded: std::collections::HashSet<Arc<str>>,
    caption: Option<(MediaTime, MediaTime, String)>,
    captions_on: bool,
    status: String,
    /// Typing a time after `g`.
    goto: Option<String>,
    ended: bool,
    /// Tracks that failed, with why.
    failed: Vec<(String, String)>,
}

/// Runs the screen until `q`, Ctrl-C or a signal; returns the tracks that failed meanwhile.
pub fn run(player: &Player, remote: bool, notes: Vec<String>) -> Result<Vec<(String, String)>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, interrupted.clone()).context("catching signals")?;
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default_hook(info);
    }));
    let _guard = TerminalGuard::enter()?;
    let mut screen = Screen {
        player,
        remote,
        duration: player.meeting().duration().unwrap_or(MediaTime::from_secs(1)),
        figures: HashMap::new(),
        degraded: Default::default(),
        caption: None,
        captions_on: true,
        status: if notes.is_empty() { "playing".to_string() } else { notes.join("; ") },
        goto: None,
        ended: false,
        failed: Vec::new(),
    };
    let events = player.events();
    player.play()?;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    loop {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        if event::poll(Duration::from_millis(50))? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Release && !screen.key(key)? {
                    break;
                }
                last_draw = Instant::now() - Duration::from_secs(1);
            }
        }
        for e in events.try_iter() {
            screen.event(e);
        }
        if last_draw.elapsed() >= Duration::from_millis(200) {
            screen.draw()?;
            last_draw = Instant::now();
        }
    }
    Ok(screen.failed)
}

impl Screen<'_> {
    /// Handles a key; false to quit.
    fn key(&mut self, key: KeyEvent) -> Result<bool> {
        if let Some(typed) = &mut self.goto {
            match key.code {
                KeyCode::Enter => {
                    let text = std::mem::take(typed);
                    self.goto = None;
                    match MediaTime::parse(&text) {
                        Some(t) => self.seek_to(t)?,
                        None => self.status = format!("{text:?} is not a time (90, 1:30.5, 1500ms)"),
                    }
                }
                KeyCode::Esc => self.goto = None,
                KeyCode::Backspace => {
                    typed.pop();
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => typed.push(c),
                _ => {}
            }
            return Ok(true);
        }
        let position = self.player.position();
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(false),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(false),
            KeyCode::Char(' ') => {
                if self.player.is_playing() {
                    self.player.pause()?;
                    self.status = format!("paused at {}", short(position));
                } else {
                    self.player.play()?;
                    self.status = "playing".into();
                }
            }
            KeyCode::Left => self.seek_to(position.saturating_sub(MediaTime::from_secs(5)))?,
            KeyCode::Right => self.seek_to(position.saturating_add(MediaTime::from_secs(5)))?,
            KeyCode::Down => self.seek_to(position.saturating_sub(MediaTime::from_secs(30)))?,
            KeyCode::Up => self.seek_to(position.saturating_add(MediaTime::from_secs(30)))?,
            KeyCode::Home => self.seek_to(MediaTime::ZERO)?,
            KeyCode::End => self.seek_to(self.duration.saturating_sub(MediaTime::from_secs(5)))?,
            KeyCode::Char('[') | KeyCode::Char(']') => {
                let now = RATES.iter().position(|&r| r >= self.player.rate() - 1e-6).unwrap_or(2);
                let next =
                    if key.code == KeyCode::Char('[') { now.saturating_sub(1) } else { (now + 1).min(5) };
                self.player.set_rate(RATES[next])?;
                self.status = format!("rate {:.2}x", RATES[next]);
            }
            KeyCode::Char('c') => {
                self.captions_on = !self.captions_on;
                self.status = format!("captions {}", if self.captions_on { "on" } else { "off" });
            }
            KeyCode::Char('g') => self.goto = Some(String::new()),
            KeyCode::Char(d @ '1'..='9') => self.toggle(d as usize - '1' as usize)?,
            _ => {}
        }
        Ok(true)
    }

    fn seek_to(&mut self, t: MediaTime) -> Result<()> {
        let t = t.max(MediaTime::ZERO).min(self.duration);
        self.player.seek(t, SeekMode::Accurate)?;
        self.ended = false;
        self.status = format!("seek to {}", short(t));
        Ok(())
    }

    fn toggle(&mut self, index: usize) -> Result<()> {
        let Some(desc) = self.player.tracks().get(index) else { return Ok(()) };
        let name = desc.name.clone();
        if self.player.subscribed().contains(&name) {
            self.player.unsubscribe(&name)?;
            self.figures.remove(&name);
            self.status = format!("{name} off");
        } else {
            self.player.subscribe(&name)?;
            self.status = format!("{name} on");
        }
        Ok(())
    }

    fn event(&mut self, event: PlayerEvent) {
        match event {
            PlayerEvent::Buffer { track, buffered, throughput, rtt, .. } => {
                self.figures.insert(track, TrackFigures { buffered, throughput, rtt });
            }
            PlayerEvent::Caption { start, end, text, .. } => {
                self.caption = Some((start, end, plain_caption(&text)))
            }
            PlayerEvent::Buffering { track, percent } if percent < 100 => {
                self.status = format!("buffering {track}: {percent}%");
            }
            PlayerEvent::Damaged { track, message, .. } => {
                self.status = format!("track {track} damaged: {message}");
            }
            PlayerEvent::Degraded { track, degraded, .. } => {
                self.status = if degraded {
                    format!("degraded {track}: the link cannot carry it; keyframes only, the sound plays on")
                } else {
                    format!("{track} keeps up again")
                };
                if degraded {
                    self.degraded.insert(track);
                } else {
                    self.degraded.remove(&track);
                }
            }
            PlayerEvent::TrackError { track, message } => {
                self.status = format!("track {track} failed: {message}");
                self.failed.push((track.to_string(), message));
            }
            PlayerEvent::EndOfMeeting => {
                self.ended = true;
                self.status = "end of meeting".into();
            }
            _ => {}
        }
    }

    fn draw(&self) -> Result<()> {
        let (width, _) = terminal::size().unwrap_or((100, 30));
        let width = usize::from(width).max(60);
        let position = self.player.position();
        let subscribed = self.player.subscribed();
        let mut lines = Vec::new();
        let state = if self.ended {
            "ended".to_string()
        } else if self.player.is_playing() {
            format!("playing {:.2}x", self.player.rate())
        } else {
            format!("paused {:.2}x", self.player.rate())
        };
        lines.push(format!(
            "tandem | {} ({}) | {} / {} | {state}",
            self.player.meeting().name(),
            if self.remote { "remote" } else { "local" },
            short(position),
            short(self.duration)
        ));
        const NAME: usize = 32;
        const BAR: usize = 18;
        let cols = width.saturating_sub(NAME + BAR + 4).max(10);
        let column_of = |t: MediaTime| {
            ((t.as_nanos().max(0) as f64 / self.duration.as_nanos().max(1) as f64) * cols as f64) as usize
        };
        let cursor_col = column_of(position).min(cols - 1);
        let mut ruler: Vec<char> = vec![' '; cols];
        ruler[cursor_col] = 'v';
        lines.push(format!("{:NAME$}  {}", "", ruler.iter().collect::<String>()));
        for (i, desc) in self.player.tracks().iter().enumerate() {
            let on = subscribed.contains(&desc.name);
            let figures = self.figures.get(&desc.name).cloned().unwrap_or_default();
            let buffered_until = position.saturating_add(figures.buffered);
            let mut row: Vec<char> = (0..cols)
                .map(|c| {
                    let t = MediaTime::from_nanos(
                        ((c as f64 + 0.5) / cols as f64 * self.duration.as_nanos() as f64) as i64,
                    );
                    match (desc.timeline.is_active(t), on) {
                        (false, _) => ' ',
                        (true, true) if t >= position && t <= buffered_until => '#',
                        (true, true) => '=',
                        (true, false) => '-',
                    }
                })
                .collect();
            row[cursor_col] = '|';
            let label =
                format!("{} {} {:<14} {:<12}", i + 1, if on { '*' } else { ' ' }, desc.name, who(desc));
            let bar = if on && self.degraded.contains(&desc.name) {
                "degraded: keyframes only".to_string()
            } else if on && desc.kind != TrackKind::Captions {
                let filled = ((figures.buffered.as_secs_f64() / 3.0) * 8.0).round().clamp(0.0, 8.0) as usize;
                format!(
                    "[{}{}] {:>4.1}s",
                    "#".repeat(filled),
                    ".".repeat(8 - filled),
                    figures.buffered.as_secs_f64()
                )
            } else if on {
                "captions".to_string()
            } else {
                "off".to_string()
            };
            lines.push(format!("{:NAME$.NAME$}  {}  {bar}", label, row.iter().collect::<String>()));
        }
        if self.remote {
            let rate: f64 = self.figures.values().map(|f| f.throughput).sum();
            let rtt = self.figures.values().map(|f| f.rtt).max().unwrap_or_default();
            lines.push(format!("link: {:.0} KB/s, round trip {} ms", rate / 1000.0, rtt.as_millis()));
        }
        let caption = match (&self.caption, self.captions_on) {
            (_, false) => "(captions off)".to_string(),
            (Some((start, end, text)), true) if position >= *start && position < *end => {
                text.replace('\n', " / ")
            }
            _ => String::new(),
        };
        lines.push(format!("caption: {caption}"));
        match &self.goto {
            Some(typed) => lines.push(format!("go to (90, 1:30.5, 1500ms; Enter): {typed}_")),
            None => lines.push(format!("status: {}", self.status)),
        }
        lines.push(KEYS.to_string());
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0))?;
        for line in lines {
            let line: String = line.chars().take(width).collect();
            queue!(out, Print(line), Clear(ClearType::UntilNewLine), Print("\r\n"))?;
        }
        queue!(out, Clear(ClearType::FromCursorDown))?;
        out.flush()?;
        Ok(())
    }
}

pub use tandem::index::subtitles::plain_caption;

fn who(desc: &TrackDesc) -> String {
    match &desc.participant {
        Some(p) => format!("{p} {}", desc.role),
        None => desc.role.to_string(),
    }
}

/// A time as minutes, seconds and tenths.
fn short(t: MediaTime) -> String {
    let tenths = t.as_millis().max(0) / 100;
    format!("{}:{:02}.{}", tenths / 600, tenths / 10 % 60, tenths % 10)
}
