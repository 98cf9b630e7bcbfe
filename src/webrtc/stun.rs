//! Just enough STUN (RFC 8489) to route a new peer's first datagram: the USERNAME of a binding
//! request is `<our ufrag>:<their ufrag>`, and our fragment names the session. Integrity is
//! checked by the session's ICE agent, not here.

const BINDING_REQUEST: u16 = 0x0001;
const MAGIC_COOKIE: u32 = 0x2112_a442;
const ATTR_USERNAME: u16 = 0x0006;
const HEADER: usize = 20;

/// Our username fragment from a STUN binding request; `None` for anything else.
pub fn request_local_ufrag(datagram: &[u8]) -> Option<&str> {
    let header = datagram.get(..HEADER)?;
    let u16_at = |b: &[u8], i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    if u16_at(header, 0)? != BINDING_REQUEST {
        return None;
    }
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if cookie != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16_at(header, 2)?);
    let mut attrs = datagram.get(HEADER..HEADER + len)?;
    while attrs.len() >= 4 {
        let kind = u16_at(attrs, 0)?;
        let alen = usize::from(u16_at(attrs, 2)?);
        let value = attrs.get(4..4 + alen)?;
        if kind == ATTR_USERNAME {
            let name = std::str::from_utf8(value).ok()?;
            return name.split(':').next().filter(|u| !u.is_empty());
        }
        let padded = (4 + alen + 3) & !3;
        attrs = attrs.get(padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_our_fragment_after_other_attributes() {
        let m = request(&[(0x0024, &[0, 0, 0, 1]), (ATTR_USERNAME, b"srv1:brw")]);
        assert_eq!(request_local_ufrag(&m), Some("srv1"));
    }

    #[test]
    fn ignores_other_messages_and_garbage() {
        let mut m = request(&[(ATTR_USERNAME, b"srv1:brw")]);
        assert_eq!(request_local_ufrag(&m[..25]), None, "truncated");
        m[0] = 0x01; // 0x0101: a binding success response
        assert_eq!(request_local_ufrag(&m), None);
        assert_eq!(request_local_ufrag(&[0x16, 0xfe, 0xfd]), None, "DTLS");
        assert_eq!(request_local_ufrag(&[]), None);
        let odd = request(&[(0x8022, b"abcde"), (ATTR_USERNAME, b":x")]);
        assert_eq!(request_local_ufrag(&odd), None, "empty fragment");
        let mut long = request(&[(ATTR_USERNAME, b"a:b")]);
        long[3] = 200; // length past the end
        assert_eq!(request_local_ufrag(&long), None);
    }
}
