//! A strict parser of OpenMetrics text (the `/metrics` format), for tests: it refuses what a
//! lenient scraper would let through, so a malformed exposition fails a test instead of
//! silently losing a metric in production.
//!
//! Checked: every line is a `# HELP`, `# TYPE` or `# UNIT` line or a sample, and the text ends
//! with `# EOF` and a newline; names and label names are valid; label values are quoted with
//! only `\\`, `\"` and `\n` escapes; values are numbers, `NaN`, `+Inf` or `-Inf`; each family
//! has a TYPE line before its samples, has each metadata line at most once and is not
//! split or repeated; a sample's name is its family's name plus a suffix its type allows; a
//! unit is the end of its family's name; no sample (name and labels) appears twice; counters
//! are non-negative and end in `_total`; histogram buckets are cumulative, end at `+Inf` and
//! agree with `_count`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the sample named `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }
}

const KINDS: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "gaugehistogram" => &["_gbucket", "_gsum", "_gcount"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_number(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => return Ok(f64::NAN),
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust would also take "inf", "infinity" and "nan" in any case; OpenMetrics does not.
    let plain = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if !plain || text.is_empty() {
        return Err(format!("not a number: {text:?}"));
    }
    text.parse::<f64>()
        .map_err(|e| format!("not a number: {text:?}: {e}"))
}

/// Parses `{a="1",b="2"}` at the start of `rest`; returns the labels and what follows.
fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    // Skip the '{'.
    chars.next();
    if let Some((i, '}')) = chars.peek().copied() {
        return Ok((labels, &rest[i + 1..]));
    }
    loop {
        let start = chars.peek().map(|(i, _)| *i).ok_or("labels cut off")?;
        let mut end = start;
        while let Some((i, c)) = chars.peek().copied() {
            if c == '=' {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let name = &rest[start..end];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if chars.next().map(|(_, c)| c) != Some('=') || chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} is not followed by =\""));
        }
        let mut value = String::new();
        loop {
            match chars.next().map(|(_, c)| c) {
                Some('"') => break,
                Some('\\') => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?} in label {name}")),
                },
                Some('\n') | None => return Err(format!("label {name}'s value is cut off")),
                Some(c) => value.push(c),
            }
        }
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        match chars.next() {
            Some((_, ',')) => continue,
            Some((i, '}')) => return Ok((labels, &rest[i + 1..])),
            other => return Err(format!("expected , or }} after a label, got {other:?}")),
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("sample without a value: {line:?}"))?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no single space before the value: {line:?}"))?;
    // What follows the value: an optional timestamp, an optional exemplar.
    let (value_and_time, _exemplar) = match rest.split_once(" # ") {
        Some((v, e)) => (v, Some(e)),
        None => (rest, None),
    };
    let mut parts = value_and_time.split(' ');
    let value = parse_number(parts.next().unwrap_or(""))?;
    if let Some(timestamp) = parts.next() {
        parse_number(timestamp)?;
    }
    if parts.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .ok_or("does not end with # EOF")?;
    let mut families: Vec<Family> = Vec::new();
    let mut declared: HashSet<String> = HashSet::new();
    let mut seen_metadata: HashSet<(String, &str)> = HashSet::new();
    let mut seen_samples: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    for (number, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let name = parts
                .next()
                .ok_or_else(|| at("metadata without a name".into()))?;
            let argument = parts.next();
            let keyword = match keyword {
                "HELP" => "HELP",
                "TYPE" => "TYPE",
                "UNIT" => "UNIT",
                other => return Err(at(format!("unknown comment {other:?}"))),
            };
            if !valid_metric_name(name) {
                return Err(at(format!("bad family name {name:?}")));
            }
            let current = families.last().map(|f| f.name.as_str());
            if current != Some(name) {
                if !declared.insert(name.to_owned()) {
                    return Err(at(format!("family {name} declared twice or split")));
                }
                families.push(Family {
                    name: name.to_owned(),
                    kind: String::new(),
                    help: None,
                    unit: None,
                    samples: Vec::new(),
                });
            }
            if !seen_metadata.insert((name.to_owned(), keyword)) {
                return Err(at(format!("{keyword} given twice for {name}")));
            }
            let family = families.last_mut().ok_or_else(|| at("no family".into()))?;
            if !family.samples.is_empty() {
                return Err(at(format!("{keyword} after {name}'s samples")));
            }
            let argument = argument.ok_or_else(|| at(format!("{keyword} without a value")))?;
            match keyword {
                "TYPE" => {
                    if !KINDS.contains(&argument) {
                        return Err(at(format!("unknown type {argument:?}")));
                    }
                    if argument == "counter" && name.ends_with("_total") {
                        return Err(at("a counter family's name must not end in _total".into()));
                    }
                    family.kind = argument.to_owned();
                }
                "HELP" => family.help = Some(argument.to_owned()),
                _ => {
                    if !name.ends_with(&format!("_{argument}")) {
                        return Err(at(format!("unit {argument} is not the end of {name}")));
                    }
                    family.unit = Some(argument.to_owned());
                }
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("a comment that is not metadata".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = families
            .last_mut()
            .ok_or_else(|| at("a sample before any TYPE line".into()))?;
        if family.kind.is_empty() {
            return Err(at(format!("a sample before {}'s TYPE line", family.name)));
        }
        let suffix = sample
            .name
            .strip_prefix(family.name.as_str())
            .ok_or_else(|| at(format!("sample outside its family {}", family.name)))?;
        if !suffixes(&family.kind).contains(&suffix) {
            return Err(at(format!(
                "suffix {suffix:?} is not allowed for a {}",
                family.kind
            )));
        }
        if !seen_samples.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("the same sample twice".into()));
        }
        family.samples.push(sample);
    }
    for family in &families {
        check_family(family)?;
    }
    Ok(Exposition { families })
}

fn check_family(family: &Family) -> Result<(), String> {
    let name = &family.name;
    if family.kind.is_empty() {
        return Err(format!("family {name} has no TYPE line"));
    }
    match family.kind.as_str() {
        "counter" => {
            let totals: Vec<&Sample> = family
                .samples
                .iter()
                .filter(|s| s.name.ends_with("_total"))
                .collect();
            if totals.is_empty() && !family.samples.is_empty() {
                return Err(format!("counter {name} has no _total sample"));
            }
            if let Some(bad) = totals.iter().find(|s| s.value.is_nan() || s.value < 0.0) {
                return Err(format!("counter {name} is {}", bad.value));
            }
        }
        "histogram" => check_histogram(family)?,
        "info" => {
            if let Some(bad) = family.samples.iter().find(|s| s.value != 1.0) {
                return Err(format!("info {name} has value {}", bad.value));
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_histogram(family: &Family) -> Result<(), String> {
    let name = &family.name;
    // Per label set (without `le`): the buckets in order, and the count.
    let mut buckets: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<BTreeMap<String, String>, f64> = HashMap::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        if sample.name.ends_with("_bucket") {
            let le = labels
                .remove("le")
                .ok_or_else(|| format!("histogram {name} has a bucket without le"))?;
            buckets
                .entry(labels)
                .or_default()
                .push((parse_number(&le)?, sample.value));
        } else if sample.name.ends_with("_count") {
            counts.insert(labels, sample.value);
        }
    }
    for (labels, series) in &buckets {
        if series
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err(format!(
                "histogram {name}{labels:?}: buckets not increasing or not cumulative"
            ));
        }
        let Some(&(last_le, last_count)) = series.last() else {
            continue;
        };
        if last_le != f64::INFINITY {
            return Err(format!("histogram {name}{labels:?} has no +Inf bucket"));
        }
        match counts.get(labels) {
            Some(&count) if count == last_count => {}
            other => {
                return Err(format!(
                    "histogram {name}{labels:?}: +Inf bucket {last_count} but count {other:?}"
                ))
            }
        }
    }
    Ok(())
}

/// The parser itself refuses what it should.
pub fn self_check() {
    let good = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
        a_seconds_sum 1.5\na_seconds_count 2\na_seconds_bucket{le=\"0.5\"} 1\n\
        a_seconds_bucket{le=\"+Inf\"} 2\n# TYPE b counter\nb_total{x=\"q\\\"\\\\\"} 3\n\
        # TYPE c gauge\nc -1.5e3\n# EOF\n";
    let parsed = parse(good).unwrap_or_else(|e| panic!("good text refused: {e}"));
    assert_eq!(parsed.value("b_total", &[("x", "q\"\\")]), Some(3.0));
    assert_eq!(parsed.value("c", &[]), Some(-1500.0));
    let bad = [
        ("no eof", "# TYPE c gauge\nc 1\n"),
        ("sample before type", "c 1\n# EOF\n"),
        ("bad name", "# TYPE 1c gauge\n1c 1\n# EOF\n"),
        ("wrong suffix", "# TYPE c gauge\nc_total 1\n# EOF\n"),
        ("counter without total", "# TYPE c counter\nc 1\n# EOF\n"),
        ("negative counter", "# TYPE c counter\nc_total -1\n# EOF\n"),
        ("lenient number", "# TYPE c gauge\nc inf\n# EOF\n"),
        (
            "split family",
            "# TYPE c gauge\nc 1\n# TYPE d gauge\nd 1\n# TYPE c gauge\n# EOF\n",
        ),
        ("help without type", "# HELP c A gauge.\nc 1\n# EOF\n"),
        ("type twice", "# TYPE c gauge\n# TYPE c gauge\nc 1\n# EOF\n"),
        (
            "duplicate sample",
            "# TYPE c gauge\nc{a=\"1\"} 1\nc{a=\"1\"} 2\n# EOF\n",
        ),
        ("bad escape", "# TYPE c gauge\nc{a=\"\\t\"} 1\n# EOF\n"),
        ("trailing comma", "# TYPE c gauge\nc{a=\"1\",} 1\n# EOF\n"),
        (
            "unit mismatch",
            "# TYPE c gauge\n# UNIT c seconds\nc 1\n# EOF\n",
        ),
        ("empty line", "# TYPE c gauge\n\nc 1\n# EOF\n"),
        ("two spaces", "# TYPE c gauge\nc  1\n# EOF\n"),
        (
            "non-cumulative buckets",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n",
        ),
        (
            "no +Inf bucket",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n# EOF\n",
        ),
        ("text after eof", "# TYPE c gauge\nc 1\n# EOF\nc 2\n"),
    ];
    for (what, text) in bad {
        assert!(parse(text).is_err(), "{what}: accepted {text:?}");
    }
}
