//! Box walking: top-level box headers and the fragment structure of (possibly torn) files.

use std::ops::Range;

use crate::media::MediaError;

/// One box found by [`top_level_boxes`]: where it starts and how long it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxHeader {
    /// Four-character code, e.g. `*b"moof"`.
    pub box_type: [u8; 4],
    /// Offset of the box's first byte in the walked buffer.
    pub offset: usize,
    /// 8, or 16 with a 64-bit `largesize`.
    pub header_len: usize,
    /// Total size including the header, as declared (size 0 = "to the end" is resolved to the
    /// end of the buffer). May exceed the buffer when the data is truncated.
    pub size: u64,
}

impl BoxHeader {
    /// Offset just past the box (may be beyond the buffer if truncated).
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.size
    }

    /// Whether the whole box lies within a buffer of `len` bytes.
    pub fn is_complete_in(&self, len: usize) -> bool {
        self.end() <= len as u64
    }

    /// The box's bytes (header included) if it is complete in `data`.
    pub fn bytes<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        let end = usize::try_from(self.end()).ok()?;
        data.get(self.offset..end)
    }

    /// Range of the box's payload (after the header), if complete in a buffer of `len` bytes.
    pub fn payload_range(&self, len: usize) -> Option<Range<usize>> {
        let end = usize::try_from(self.end()).ok().filter(|&e| e <= len)?;
        Some(self.offset + self.header_len..end)
    }

    fn type_str(&self) -> String {
        String::from_utf8_lossy(&self.box_type).into_owned()
    }
}

/// Reads the box header at `offset` of `data`.
fn read_box_header(data: &[u8], offset: usize) -> Result<BoxHeader, MediaError> {
    let head = data
        .get(offset..offset.saturating_add(8))
        .ok_or_else(|| MediaError::InvalidMp4(format!("box header at {offset} truncated")))?;
    let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let box_type = [head[4], head[5], head[6], head[7]];
    let (header_len, size) = match size32 {
        1 => {
            let large = data.get(offset + 8..offset + 16).ok_or_else(|| {
                MediaError::InvalidMp4(format!("box largesize at {offset} truncated"))
            })?;
            let mut b = [0u8; 8];
            b.copy_from_slice(large);
            (16, u64::from_be_bytes(b))
        }
        0 => (8, (data.len() - offset) as u64),
        n => (8, u64::from(n)),
    };
    if size < header_len as u64 {
        return Err(MediaError::InvalidMp4(format!(
            "box '{}' at {offset} declares size {size}",
            String::from_utf8_lossy(&box_type)
        )));
    }
    Ok(BoxHeader {
        box_type,
        offset,
        header_len,
        size,
    })
}

/// Iterator over the top-level boxes of a buffer; see [`top_level_boxes`].
#[derive(Debug, Clone)]
pub struct TopLevelBoxes<'a> {
    data: &'a [u8],
    offset: usize,
    done: bool,
}

impl Iterator for TopLevelBoxes<'_> {
    type Item = Result<BoxHeader, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.data.len() {
            return None;
        }
        match read_box_header(self.data, self.offset) {
            Ok(h) => {
                match usize::try_from(h.end()) {
                    Ok(end) if end <= self.data.len() => self.offset = end,
                    // A truncated box is reported, and is the last one.
                    _ => self.done = true,
                }
                Some(Ok(h))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Walks the top-level boxes of `data`.
///
/// Yields each box header in order. A box that extends past the end of `data` is yielded (check
/// [`BoxHeader::is_complete_in`]) and ends the walk; an unreadable header (fewer than 8 bytes
/// left, or a size smaller than the header) is yielded as `Err` and ends the walk.
pub fn top_level_boxes(data: &[u8]) -> TopLevelBoxes<'_> {
    TopLevelBoxes {
        data,
        offset: 0,
        done: false,
    }
}

/// The structure of a fragmented MP4 file, as found by [`split_fragments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentedLayout {
    /// `ftyp` (if any) through `moov`.
    pub init: Range<usize>,
    /// Each complete `moof`+`mdat` pair (from the `moof` start to the `mdat` end).
    pub fragments: Vec<Range<usize>>,
    /// Where the valid data ends: the end of the last complete top-level box that makes sense.
    /// Truncating the file here repairs it.
    pub valid_end: usize,
    /// `Some(valid_end)` when bytes follow the valid data (a torn fragment, a lone `moof`, or
    /// garbage); `None` when the whole buffer is valid.
    pub torn_tail_start: Option<usize>,
}

/// Splits a fragmented MP4 (init, then `moof`+`mdat` pairs), possibly truncated at any byte.
///
/// Boxes other than `moof`/`mdat` after the init (`free`, `styp`, `sidx`, …) are skipped when
/// complete. The data stops being valid at the first incomplete box, unreadable header, a
/// `moof` not followed by an `mdat`, or an `mdat` without a `moof`. It is an error only when the
/// init itself (`moov`) is missing or incomplete.
pub fn split_fragments(data: &[u8]) -> Result<FragmentedLayout, MediaError> {
    let mut boxes = top_level_boxes(data).peekable();
    let mut init_end = None;
    for b in boxes.by_ref() {
        let b = b?;
        if !b.is_complete_in(data.len()) {
            return Err(MediaError::InvalidMp4(format!(
                "'{}' box at {} truncated before the end of the init segment",
                b.type_str(),
                b.offset
            )));
        }
        if &b.box_type == b"moov" {
            init_end = Some(b.end() as usize);
            break;
        }
        if matches!(&b.box_type, b"moof" | b"mdat") {
            break;
        }
    }
    let init_end = init_end.ok_or_else(|| MediaError::InvalidMp4("no moov box".into()))?;

    let mut fragments = Vec::new();
    let mut valid_end = init_end;
    while let Some(b) = boxes.next() {
        let Ok(b) = b else { break };
        if !b.is_complete_in(data.len()) {
            break;
        }
        match &b.box_type {
            b"moof" => {
                let Some(Some(mdat)) = boxes.peek().map(|r| r.as_ref().ok().copied()) else {
                    break;
                };
                if &mdat.box_type != b"mdat" || !mdat.is_complete_in(data.len()) {
                    break;
                }
                boxes.next();
                fragments.push(b.offset..mdat.end() as usize);
                valid_end = mdat.end() as usize;
            }
            b"mdat" => break,
            _ => valid_end = b.end() as usize,
        }
    }
    Ok(FragmentedLayout {
        init: 0..init_end,
        fragments,
        valid_end,
        torn_tail_start: (valid_end < data.len()).then_some(valid_end),
    })
}
