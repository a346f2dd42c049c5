//! Progress bars on stderr: the command line's [`Reporter`], drawn with
//! indicatif (only on a terminal, never with `-q`; see
//! [`Global::progress`](super::Global::progress)).

use crate::progress::{Reporter, Task, Work};
use indicatif::{ProgressBar, ProgressStyle};

/// Draws one bar (or spinner) per piece of work.
pub struct Bars;

impl Reporter for Bars {
    fn start(&self, work: Work, bytes: Option<u64>) -> Box<dyn Task> {
        let pb = match work {
            Work::Scan => {
                let pb = ProgressBar::new_spinner();
                if let Ok(style) =
                    ProgressStyle::with_template("{spinner} scanning: {msg}, {bytes} hashed ({bytes_per_sec})")
                {
                    pb.set_style(style);
                }
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                pb
            }
            Work::Unpack => {
                let pb = ProgressBar::new(bytes.unwrap_or(0));
                if let Ok(style) =
                    ProgressStyle::with_template("unpacking {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                {
                    pb.set_style(style);
                }
                pb
            }
            Work::Pull | Work::Push => {
                let pb = ProgressBar::new(bytes.unwrap_or(0));
                pb.set_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                pb.set_message(if work == Work::Push { "push" } else { "pull" });
                pb
            }
        };
        Box::new(Bar { pb, work })
    }
}

/// One bar; cleared when the work ends.
struct Bar {
    pb: ProgressBar,
    work: Work,
}

impl Task for Bar {
    fn advance(&self, n: u64) {
        self.pb.inc(n);
    }

    fn items(&self, done: u64, total: Option<u64>) {
        match (self.work, total) {
            (Work::Scan, _) => self.pb.set_message(format!("{done} entries")),
            (Work::Pull, Some(total)) => self.pb.set_message(format!("pull {done}/{total} blobs")),
            _ => {}
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.pb.finish_and_clear();
    }
}
