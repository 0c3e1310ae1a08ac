//! The public test vectors in ../shared/vectors/signatures.json, used verbatim.

use scenehook::{
    config::Secret,
    signature::{SignatureError, SignatureHeaders, Verifier, sign_hex, sign_standard},
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/signatures.json"
    );
    let text = std::fs::read_to_string(path).expect("shared test vectors are beside the repo");
    serde_json::from_str(&text).unwrap()
}

fn std_headers<'a>(v: &'a Value, signature: &'a str) -> SignatureHeaders<'a> {
    SignatureHeaders {
        webhook_id: v["msg_id"].as_str(),
        webhook_timestamp: None,
        webhook_signature: Some(signature),
        hex_signature: None,
    }
}

#[test]
fn standard_webhooks_vectors() {
    for v in vectors()["standard_webhooks"].as_array().unwrap() {
        let secret = v["secret"].as_str().unwrap();
        let ts = v["timestamp"].as_i64().unwrap();
        let ts_text = ts.to_string();
        let payload = v["payload"].as_str().unwrap().as_bytes();
        let expected = v["expected_signature"].as_str().unwrap();
        assert_eq!(
            sign_standard(secret, v["msg_id"].as_str().unwrap(), ts, payload),
            expected
        );
        let verifier = Verifier::new(&[Secret::new(secret)], 300);
        let mut headers = std_headers(v, expected);
        headers.webhook_timestamp = Some(&ts_text);
        assert_eq!(verifier.verify(&headers, payload, ts), Ok(()));
        assert_eq!(verifier.verify(&headers, payload, ts + 300), Ok(()));
        assert_eq!(
            verifier.verify(&headers, payload, ts + 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verifier.verify(&headers, payload, ts - 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        if let Some(neg) = v.get("negative") {
            let wrong = neg["wrong_signature"].as_str().unwrap();
            let mut h = std_headers(v, wrong);
            h.webhook_timestamp = Some(&ts_text);
            assert_eq!(
                verifier.verify(&h, payload, ts),
                Err(SignatureError::Mismatch)
            );
            let partial = neg["partial_signature"].as_str().unwrap();
            let mut h = std_headers(v, partial);
            h.webhook_timestamp = Some(&ts_text);
            assert!(verifier.verify(&h, payload, ts).is_err());
            let decoys: Vec<&str> = neg["decoys_for_multi_signature_header"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            let only_decoys = decoys.join(" ");
            let mut h = std_headers(v, &only_decoys);
            h.webhook_timestamp = Some(&ts_text);
            assert_eq!(
                verifier.verify(&h, payload, ts),
                Err(SignatureError::Mismatch)
            );
            let with_valid = format!("{} {expected} {}", decoys[0], decoys[1]);
            let mut h = std_headers(v, &with_valid);
            h.webhook_timestamp = Some(&ts_text);
            assert_eq!(verifier.verify(&h, payload, ts), Ok(()));
            // Each of the three headers missing fails.
            let mut h = std_headers(v, expected);
            h.webhook_timestamp = None;
            assert_eq!(
                verifier.verify(&h, payload, ts),
                Err(SignatureError::Missing)
            );
            let mut h = std_headers(v, expected);
            h.webhook_timestamp = Some(&ts_text);
            h.webhook_id = None;
            assert_eq!(
                verifier.verify(&h, payload, ts),
                Err(SignatureError::Missing)
            );
            let h = SignatureHeaders {
                webhook_id: v["msg_id"].as_str(),
                webhook_timestamp: Some(&ts_text),
                ..Default::default()
            };
            assert_eq!(
                verifier.verify(&h, payload, ts),
                Err(SignatureError::Missing)
            );
        }
    }
}

#[test]
fn github_hex_vector() {
    for v in vectors()["hex_body_hmac"].as_array().unwrap() {
        let secret = v["secret"].as_str().unwrap();
        let payload = v["payload"].as_str().unwrap().as_bytes();
        assert_eq!(
            sign_hex(secret, payload),
            v["expected_hex"].as_str().unwrap()
        );
        let verifier = Verifier::new(&[Secret::new(secret)], 300);
        for form in [
            v["expected_hex"].as_str().unwrap(),
            v["header_form"].as_str().unwrap(),
        ] {
            let h = SignatureHeaders {
                hex_signature: Some(form),
                ..Default::default()
            };
            assert_eq!(verifier.verify(&h, payload, 0), Ok(()));
        }
    }
}
