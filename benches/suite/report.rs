//! What every scenario reports: rows of samples (candidate and baselines, measured
//! alternately), each with its durability; the ratio that the scenario's goal is about;
//! printed as a Markdown table and kept for the JSON file.

use serde_json::{Value, json};

/// How long and how often to measure.
#[derive(Clone, Copy)]
pub struct Mode {
    pub full: bool,
    /// Rounds per variant (A B A B ...): at least 3.
    pub rounds: usize,
    /// Seconds per timed sample.
    pub seconds: u64,
}

/// One measurement of one variant: its main figure, and its latency when it has one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub value: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Sample {
    pub fn of(value: f64) -> Self {
        Self {
            value,
            ..Self::default()
        }
    }
}

/// A variant and its samples.
pub struct Row {
    pub name: String,
    /// When its answer comes: "fdatasync before 202", "none", ...
    pub durability: &'static str,
    pub samples: Vec<Sample>,
}

impl Row {
    pub fn new(name: impl Into<String>, durability: &'static str, samples: Vec<Sample>) -> Self {
        Self {
            name: name.into(),
            durability,
            samples,
        }
    }

    pub fn median(&self) -> f64 {
        median(self.samples.iter().map(|s| s.value))
    }

    fn spread(&self) -> (f64, f64) {
        let values = self.samples.iter().map(|s| s.value);
        (
            values.clone().fold(f64::INFINITY, f64::min),
            values.fold(f64::NEG_INFINITY, f64::max),
        )
    }

    fn latency(&self, pick: fn(&Sample) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(pick).collect();
        (!values.is_empty()).then(|| median(values.into_iter()))
    }
}

/// What the scenario's ratio must be.
#[derive(Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
    /// The candidate's own median, in the table's unit, below this (for figures whose
    /// baseline only shows what they do not depend on).
    Below(f64),
    /// Reported, with no goal attached.
    None,
}

/// One scenario's result.
pub struct Table {
    /// `1-http`, `2-log`, ...: what `--only` selects and the JSON's key.
    pub id: &'static str,
    pub title: String,
    /// The unit of the rows' main figure: "writes/s", "MiB", "ms".
    pub unit: &'static str,
    pub rows: Vec<Row>,
    /// The ratio the goal is about: `rows[of]` over `rows[to]`, by median.
    pub of: usize,
    pub to: usize,
    pub goal: Goal,
    /// What else the reader needs: sizes, settings, derived figures.
    pub notes: Vec<String>,
}

impl Table {
    pub fn ratio(&self) -> f64 {
        self.rows[self.of].median() / self.rows[self.to].median()
    }

    pub fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::AtLeast(goal) => Some(self.ratio() >= goal),
            Goal::AtMost(goal) => Some(self.ratio() <= goal),
            Goal::Below(limit) => Some(self.rows[self.of].median() < limit),
            Goal::None => None,
        }
    }

    pub fn goal_text(&self) -> String {
        match self.goal {
            Goal::AtLeast(goal) => format!("at least {goal}"),
            Goal::AtMost(goal) => format!("at most {goal}"),
            Goal::Below(limit) => {
                format!("`{}` under {limit} {}", self.rows[self.of].name, self.unit)
            }
            Goal::None => "none".into(),
        }
    }

    pub fn ratio_label(&self) -> String {
        format!("{} / {}", self.rows[self.of].name, self.rows[self.to].name)
    }

    pub fn print(&self) {
        println!("\n### {}\n", self.title);
        let latency = self.rows.iter().any(|r| r.latency(|s| s.p99_ms).is_some());
        print!("| variant | durability | {} (median) | spread |", self.unit);
        if latency {
            print!(" p50 ms | p99 ms |");
        }
        println!(" ratio to `{}` |", self.rows[self.to].name);
        println!(
            "|---|---|---|---|{}---|",
            if latency { "---|---|" } else { "" }
        );
        let base = self.rows[self.to].median();
        for row in &self.rows {
            let (low, high) = row.spread();
            print!(
                "| {} | {} | {} | {}..{} |",
                row.name,
                row.durability,
                figure(row.median()),
                figure(low),
                figure(high)
            );
            if latency {
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                print!(
                    " {} | {} |",
                    ms(row.latency(|s| s.p50_ms)),
                    ms(row.latency(|s| s.p99_ms))
                );
            }
            println!(" {:.2} |", row.median() / base);
        }
        println!();
        let verdict = match self.met() {
            Some(true) => " (met)",
            Some(false) => " (**not met**)",
            None => "",
        };
        println!(
            "{} = **{:.2}**; goal: {}{verdict}",
            self.ratio_label(),
            self.ratio(),
            self.goal_text()
        );
        for note in &self.notes {
            println!("- {note}");
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "rows": self.rows.iter().map(|r| {
                let (low, high) = r.spread();
                json!({
                    "name": r.name,
                    "durability": r.durability,
                    "median": r.median(),
                    "low": low,
                    "high": high,
                    "p50_ms": r.latency(|s| s.p50_ms),
                    "p99_ms": r.latency(|s| s.p99_ms),
                    "samples": r.samples.iter().map(|s| s.value).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
            "ratio": {
                "of": self.rows[self.of].name,
                "to": self.rows[self.to].name,
                "value": self.ratio(),
                "goal": self.goal_text(),
                "met": self.met(),
            },
            "notes": self.notes,
        })
    }
}

/// Measures `variants` alternately, round by round (A B C A B C ...): `measure(v)`
/// gives one sample of variant `v`.
pub fn alternate(
    rounds: usize,
    variants: usize,
    mut measure: impl FnMut(usize) -> crate::Result<Sample>,
) -> crate::Result<Vec<Vec<Sample>>> {
    let mut samples = vec![Vec::with_capacity(rounds); variants];
    for _ in 0..rounds {
        for (variant, samples) in samples.iter_mut().enumerate() {
            samples.push(measure(variant)?);
        }
    }
    Ok(samples)
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The latency at quantile `q` of sorted microseconds, in milliseconds.
pub fn quantile_ms(sorted_micros: &[u32], q: f64) -> f64 {
    if sorted_micros.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_micros.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_micros[i]) / 1000.0
}

/// A figure with as many decimals as it needs.
fn figure(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
