//! Server-sent events: the open `GET /v1/events` stream ([`EventStream`]) and the parser
//! of the `text/event-stream` format under it ([`SseParser`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::{ClientError, MAX_SSE_LINE, STREAM_IDLE_LIMIT};
use crate::runtime::root_cause;

/// An open `GET /v1/events` stream.
#[derive(Debug)]
pub struct EventStream {
    addr: SocketAddr,
    response: reqwest::Response,
    parser: SseParser,
    /// Frames parsed from the last chunk and not yet handed out.
    ready: VecDeque<SseFrame>,
}

impl EventStream {
    pub(super) fn new(addr: SocketAddr, response: reqwest::Response) -> Self {
        Self {
            addr,
            response,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        }
    }

    /// The next frame: an event's data or a keep-alive comment. `None` when the node ended
    /// the stream (it is stopping).
    pub async fn next_frame(&mut self) -> Result<Option<SseFrame>, ClientError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            let chunk = match tokio::time::timeout(STREAM_IDLE_LIMIT, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(self.broken(root_cause(&e))),
                Err(_) => {
                    return Err(self.broken(format!(
                        "nothing for {} s, not even a keep-alive: the node is stuck or gone",
                        STREAM_IDLE_LIMIT.as_secs()
                    )))
                }
            };
            let frames = self
                .parser
                .feed(&chunk)
                .map_err(|e| self.broken(e.to_string()))?;
            self.ready.extend(frames);
        }
    }

    /// The next event's JSON text, skipping comments; `None` when the stream ended.
    pub async fn next_data(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.next_frame().await? {
                Some(SseFrame::Message { data, .. }) => return Ok(Some(data)),
                Some(SseFrame::Comment(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    fn broken(&self, reason: String) -> ClientError {
        ClientError::StreamBroken {
            addr: self.addr,
            reason,
        }
    }
}

/// One unit of a server-sent event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// A dispatched event: its `data:` lines joined by newlines, and its `event:` type if any.
    Message { event: Option<String>, data: String },
    /// A comment line (`: keep-alive`), without the colon and one leading space.
    Comment(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a line of the event stream is longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("an event of the event stream is longer than {limit} bytes")]
    EventTooLong { limit: usize },
}

/// Splits a server-sent event stream (the WHATWG `text/event-stream` format) into frames,
/// whatever the chunk boundaries: lines end in LF, CR or CRLF (a CR at the end of one chunk
/// and the LF at the start of the next are one line break), an empty line dispatches the
/// event, a line starting with `:` is a comment, `id` and `retry` are ignored, and an event
/// not ended by an empty line when the stream ends is discarded.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last line ended in CR, so a LF next is part of that line break.
    after_cr: bool,
    /// A byte-order mark is stripped from the first line only.
    seen_first_line: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
}

impl SseParser {
    /// Feeds the next chunk of the stream; returns the frames it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseFrame>, SseError> {
        let mut frames = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(frame) = self.end_line(&line)? {
                        frames.push(frame);
                    }
                }
                _ if self.line.len() >= MAX_SSE_LINE => {
                    return Err(SseError::LineTooLong {
                        limit: MAX_SSE_LINE,
                    })
                }
                _ => self.line.push(byte),
            }
        }
        Ok(frames)
    }

    fn end_line(&mut self, raw: &[u8]) -> Result<Option<SseFrame>, SseError> {
        let text = String::from_utf8_lossy(raw);
        let mut line: &str = &text;
        if !self.seen_first_line {
            self.seen_first_line = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            let event = self.event.take();
            if !std::mem::take(&mut self.has_data) {
                return Ok(None);
            }
            return Ok(Some(SseFrame::Message {
                event,
                data: std::mem::take(&mut self.data),
            }));
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            return Ok(Some(SseFrame::Comment(comment.to_owned())));
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_SSE_LINE {
                    return Err(SseError::EventTooLong {
                        limit: MAX_SSE_LINE,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // `id` and `retry` matter to reconnecting browsers, not to a terminal.
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn message(data: &str) -> SseFrame {
        SseFrame::Message {
            event: None,
            data: data.to_owned(),
        }
    }

    fn feed_all(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut parser = SseParser::default();
        chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk).unwrap())
            .collect()
    }

    #[test]
    fn events_and_comments_in_one_chunk() {
        let frames = feed_all(&[b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\n\n"]);
        assert_eq!(
            frames,
            vec![
                message("{\"a\":1}"),
                SseFrame::Comment("keep-alive".into()),
                message("{\"b\":2}"),
            ]
        );
    }

    #[test]
    fn a_line_split_across_chunks_is_one_line() {
        let frames = feed_all(&[b"da", b"ta: {\"seq\":", b"1}", b"\n", b"\n"]);
        assert_eq!(frames, vec![message("{\"seq\":1}")]);
    }

    #[test]
    fn an_event_is_dispatched_only_by_its_blank_line() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"data: x\n").unwrap().is_empty());
        assert_eq!(parser.feed(b"\n").unwrap(), vec![message("x")]);
        // Cut off before its blank line: never dispatched.
        assert!(parser.feed(b"data: half").unwrap().is_empty());
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_break() {
        let frames = feed_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]);
        assert_eq!(frames, vec![message("a"), message("b")]);
    }

    #[test]
    fn multi_line_data_event_types_and_ignored_fields() {
        let frames = feed_all(&[
            b"\xEF\xBB\xBFevent: lagged\nid: 7\nretry: 100\ndata: one\ndata:two\ndata\n\n",
        ]);
        assert_eq!(
            frames,
            vec![SseFrame::Message {
                event: Some("lagged".into()),
                data: "one\ntwo\n".into(),
            }]
        );
        // A blank line with no data dispatches nothing; a colon-less unknown field is ignored.
        assert!(feed_all(&[b"id: 3\n\nbogus\n\n"]).is_empty());
    }

    #[test]
    fn a_multibyte_character_split_across_chunks_survives() {
        let text = "data: caf\u{e9} \u{2603}\n\n".as_bytes();
        let (a, b) = text.split_at(10); // inside the two-byte é
        assert_eq!(feed_all(&[a, b]), vec![message("caf\u{e9} \u{2603}")]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = SseParser::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(Vec::new());
        for _ in 0..=(MAX_SSE_LINE / chunk.len()) {
            result = parser.feed(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result.unwrap_err(),
            SseError::LineTooLong {
                limit: MAX_SSE_LINE
            }
        );
    }

    proptest! {
        #[test]
        fn chunk_boundaries_do_not_change_the_frames(
            cuts in proptest::collection::vec(0usize..200, 0..12),
            crlf in any::<bool>(),
        ) {
            let newline = if crlf { "\r\n" } else { "\n" };
            let stream = [
                "data: {\"seq\":1}", "", ": keep-alive", "", "data: {\"seq\":2,\"x\":\"\u{e9}\"}",
                "data: second line", "", "event: e", "data: 3", "",
            ]
            .join(newline);
            let stream = format!("{stream}{newline}").into_bytes();
            let whole = feed_all(&[&stream]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            chunks.push(&stream[start..]);
            prop_assert_eq!(feed_all(&chunks), whole.clone());
            prop_assert_eq!(whole.len(), 4);
        }
    }
}
