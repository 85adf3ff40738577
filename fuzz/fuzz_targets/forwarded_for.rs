//! `X-Forwarded-For` parsing behind trusted proxies: never a panic, and the client address is
//! the peer itself or an address that appears in the header.
#![no_main]

use apigateway::edge::ClientIpResolver;
use libfuzzer_sys::fuzz_target;
use once_cell::sync::Lazy;
use std::net::IpAddr;

static RESOLVER: Lazy<ClientIpResolver> = Lazy::new(|| {
    ClientIpResolver::compile(&["10.0.0.0/8".into(), "::1".into(), "192.0.2.7".into()])
        .expect("resolver compiles")
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = match selector % 3 {
        0 => "10.1.2.3".parse().unwrap(),
        1 => "::1".parse().unwrap(),
        _ => "198.51.100.1".parse().unwrap(),
    };
    // Header lines separated by LF.
    let lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let client = RESOLVER.resolve(peer, lines.iter().copied());
    if client != peer {
        let text = String::from_utf8_lossy(rest);
        let appears = text
            .split([',', '\n'])
            .any(|hop| hop.trim().parse::<IpAddr>().ok() == Some(client));
        assert!(appears, "{client} came from nowhere in {text:?}");
    }
});
