//! The real executable (`--stdio`) fed bad input: garbage, half a JSON object, a line
//! of several MiB, unknown commands, wrong argument types. Each gets an error reply,
//! and the agent keeps serving: a guest-ping at the end is answered.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn bad_input_gets_errors_and_the_agent_keeps_serving() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_halyard-guest-agent"))
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agent");
    let mut stdin = child.stdin.take().expect("stdin");
    let big = format!(
        "{{\"execute\":\"guest-ping\",\"arguments\":{{\"x\":\"{}\"}}}}\n",
        "a".repeat(5 << 20)
    );
    let writer = std::thread::spawn(move || {
        let inputs: Vec<Vec<u8>> = vec![
            b"garbage that is not json\n".to_vec(),
            b"{\"execute\": \"guest-ping\"\n".to_vec(),
            big.into_bytes(),
            b"{\"execute\":\"guest-file-open\",\"arguments\":{\"path\":\"/etc/shadow\"}}\n"
                .to_vec(),
            b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":\"not a number\"}}\n".to_vec(),
            b"{\"execute\":\"guest-exec\",\"arguments\":{\"path\":\"/bin/sh\"}}\n".to_vec(),
            b"{\"execute\":42}\n".to_vec(),
            b"[1,2,3]\n".to_vec(),
            b"{\"execute\":\"guest-shutdown\",\"arguments\":{\"mode\":7}}\n".to_vec(),
            b"\xff\xfe\x00\x01{{{{\n".to_vec(),
            b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":7}}\n".to_vec(),
            b"{\"execute\":\"guest-ping\",\"id\":\"last\"}\n".to_vec(),
        ];
        for i in inputs {
            stdin.write_all(&i).expect("write");
        }
        // stdin closes: the agent ends after answering.
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut replies = Vec::new();
    loop {
        let mut line = Vec::new();
        if out.read_until(b'\n', &mut line).expect("read") == 0 {
            break;
        }
        replies.push(line);
    }
    writer.join().expect("writer");
    let st = child.wait().expect("wait");
    assert!(st.success(), "the agent exits cleanly at end of input");
    let text: Vec<String> = replies
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .collect();
    for t in &text {
        eprintln!("{}", t.chars().take(160).collect::<String>());
    }
    let errors = text.iter().filter(|t| t.contains("\"error\"")).count();
    assert_eq!(errors, 10, "one error per bad input: {text:#?}");
    assert!(text
        .iter()
        .any(|t| t.contains("CommandNotFound") && t.contains("guest-file-open")));
    assert!(
        text.iter().any(|t| t.contains("has been disabled")),
        "guest-exec is off by default"
    );
    assert!(text.iter().any(|t| t.contains("message too long")));
    assert!(text
        .iter()
        .any(|t| t.contains("Invalid parameter type for 'id'")));
    // guest-sync-delimited: 0xFF before the answer, then the answer.
    assert!(replies
        .iter()
        .any(|l| l.first() == Some(&0xFF) && l.ends_with(b"{\"return\":7}\n")));
    assert_eq!(
        text.last().map(String::as_str),
        Some("{\"id\":\"last\",\"return\":{}}")
    );
}
