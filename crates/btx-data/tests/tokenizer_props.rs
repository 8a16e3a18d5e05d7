//! decode(encode(x)) == x for arbitrary UTF-8, for a byte-level BPE trained by btx.

use std::sync::OnceLock;

use btx_data::builtin;
use btx_data::Tok;
use proptest::prelude::*;

fn tok() -> &'static Tok {
    static T: OnceLock<Tok> = OnceLock::new();
    T.get_or_init(|| {
        let mut docs = vec![];
        for d in builtin::DOMAINS {
            docs.extend(builtin::docs(d, 0, 200).unwrap());
        }
        docs.push("ünïcödé 漢字 🙂 \t\r\n <|endoftext|>".into());
        Tok::train_bpe(docs.iter(), 600, 2).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn round_trips_any_unicode(s in any::<String>()) {
        let t = tok();
        let ids = t.encode(&s).unwrap();
        prop_assert_eq!(t.decode(&ids).unwrap(), s);
    }

    #[test]
    fn round_trips_text_like_strings(s in "[ a-zA-Z0-9.,:;!?()\\n\\t=+*/#-]{0,200}") {
        let t = tok();
        let ids = t.encode(&s).unwrap();
        prop_assert!(ids.len() <= s.len());
        prop_assert_eq!(t.decode(&ids).unwrap(), s);
    }

    #[test]
    fn round_trips_mixed_scripts(parts in proptest::collection::vec(
        prop_oneof![Just("the "), Just("Question: "), Just("#### "), Just("猫"), Just("🐈"),
                    Just("é"), Just("\u{0}"), Just("\u{FEFF}"), Just("  "), Just("\r\n"),
                    Just("<|endoftext|>")], 0..40)) {
        let s: String = parts.concat();
        let t = tok();
        prop_assert_eq!(t.decode(&t.encode(&s).unwrap()).unwrap(), s);
    }
}
