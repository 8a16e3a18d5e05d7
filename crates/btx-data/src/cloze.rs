//! Cloze tasks from held-out text, for corpora that come without a task set: the word that
//! ends a sentence or a line, given the text before it (LAMBADA's form, on the domain's own
//! validation documents). A model has to carry the context to the end of the sentence, so these
//! measure in-domain skill at any model size, and every corpus yields as many as it has
//! sentences — enough items for a tight interval, where hand-made task sets have a few dozen.

use crate::builtin::Task;
use btx_core::rng::Rng;

/// Characters of context before the answer, at most (cut back to a whitespace boundary).
pub const CONTEXT_CHARS: usize = 300;
/// Characters of context at least: a sentence's last word with nothing before it is a guess.
const MIN_CONTEXT_CHARS: usize = 80;
/// Answers are words of at least this many characters (no "a", "I", "x").
const MIN_WORD_CHARS: usize = 3;

/// Up to `n` distinct cloze tasks from `docs` (validation documents), in a deterministic
/// random order from `seed` and `domain`. Each prompt is a document's text up to (not
/// including) the space before a word that ends a sentence or a line; the answer is that word,
/// scored by `first-word`.
pub fn cloze_tasks(docs: &[&str], n: usize, seed: u64, domain: &str) -> Vec<Task> {
    let mut found: Vec<(usize, usize, usize)> = vec![];
    for (i, doc) in docs.iter().enumerate() {
        for (start, end) in sentence_final_words(doc) {
            found.push((i, start, end));
        }
    }
    let mut rng = Rng::derive(seed, &format!("cloze-{domain}"));
    rng.shuffle(&mut found);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n.min(found.len()));
    for (i, start, end) in found {
        if out.len() == n {
            break;
        }
        let doc = docs[i];
        // The prompt stops before the space that precedes the word: the model writes " word".
        let stop = start - 1;
        let from = context_start(doc, stop);
        let prompt = &doc[from..stop];
        if prompt.len() < MIN_CONTEXT_CHARS || !seen.insert(prompt.to_string()) {
            continue;
        }
        out.push(Task {
            prompt: prompt.to_string(),
            answer: doc[start..end].to_string(),
            scorer: "first-word".into(),
        });
    }
    out
}

/// Byte ranges of words that end a sentence or a line: alphanumeric, at least
/// [`MIN_WORD_CHARS`] characters, after a space, followed by a line break or by `.`, `!`, `?`
/// before whitespace (what the `first-word` scorer stops at, so a right answer scores).
fn sentence_final_words(doc: &str) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let chars: Vec<(usize, char)> = doc.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        if k == 0 || chars[k - 1].1 != ' ' || !chars[k].1.is_alphanumeric() {
            k += 1;
            continue;
        }
        let first = k;
        while k < chars.len() && chars[k].1.is_alphanumeric() {
            k += 1;
        }
        // A full stop ends a sentence only before whitespace or the end ("self.value",
        // "os.path" and "e.g" do not).
        let ends_sentence = match chars.get(k).map(|&(_, c)| c) {
            Some('\n') => true,
            Some('.' | '!' | '?') => chars
                .get(k + 1)
                .is_none_or(|&(_, c)| c.is_whitespace() || c == '"' || c == '\''),
            _ => false,
        };
        if ends_sentence && k - first >= MIN_WORD_CHARS {
            let end = chars.get(k).map_or(doc.len(), |&(b, _)| b);
            out.push((chars[first].0, end));
        }
    }
    out
}

/// Where a prompt ending at byte `stop` starts: at most [`CONTEXT_CHARS`] before it, moved
/// forward to just after a whitespace so that no word is cut.
fn context_start(doc: &str, stop: usize) -> usize {
    if stop <= CONTEXT_CHARS {
        return 0;
    }
    let mut from = stop - CONTEXT_CHARS;
    while !doc.is_char_boundary(from) {
        from += 1;
    }
    match doc[from..stop].find(char::is_whitespace) {
        Some(ws) => {
            let at = from + ws;
            at + doc[at..].chars().next().map_or(0, char::len_utf8)
        }
        None => from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::score;

    const TEXT: &str = "The harbour was quiet that winter, and the boats stayed in. \
        Every morning the old captain walked along the pier to look at the water, \
        and every evening he wrote a line in his logbook.\nIt was a long season.";

    #[test]
    fn answers_are_sentence_final_words_after_their_context() {
        let tasks = cloze_tasks(&[TEXT], 10, 0, "general");
        let answers: Vec<&str> = tasks.iter().map(|t| t.answer.as_str()).collect();
        // "in" is too short; "quiet", "winter" do not end a sentence; "logbook" and "season"
        // do, and have enough context before them.
        let mut sorted = answers.clone();
        sorted.sort();
        assert_eq!(sorted, ["logbook", "season"], "{tasks:?}");
        for t in &tasks {
            assert!(!t.prompt.ends_with(' '), "{:?}", t.prompt);
            let at = TEXT
                .find(&t.prompt)
                .expect("the prompt is the text before the word");
            assert!(TEXT[at + t.prompt.len()..].starts_with(&format!(" {}", t.answer)));
            assert!(t.prompt.len() <= CONTEXT_CHARS);
            // The generation a model should write scores; a wrong one does not.
            assert!(score(t, &format!(" {}.\nNext", t.answer)));
            assert!(!score(t, " harbour."));
        }
    }

    #[test]
    fn deterministic_distinct_and_capped() {
        let docs: Vec<String> = (0..40)
            .map(|i| format!("Day {i} began. {TEXT} Then the sea went quiet.\n"))
            .collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let a = cloze_tasks(&refs, 25, 7, "general");
        let b = cloze_tasks(&refs, 25, 7, "general");
        assert_eq!(a, b);
        assert_eq!(a.len(), 25);
        let prompts: std::collections::HashSet<&str> =
            a.iter().map(|t| t.prompt.as_str()).collect();
        assert_eq!(prompts.len(), 25, "prompts are distinct");
        assert_ne!(
            a,
            cloze_tasks(&refs, 25, 8, "general"),
            "the seed orders them"
        );
        // Long documents: the context is cut at a word boundary, not mid-word.
        let long = "word ".repeat(200) + "and finally the end.";
        let t = cloze_tasks(&[long.as_str()], 1, 0, "x");
        assert_eq!(t[0].answer, "end");
        assert!(t[0].prompt.starts_with("word "), "{:?}", &t[0].prompt[..20]);
        assert!(cloze_tasks(&["no sentence ends here"], 5, 0, "x").is_empty());
        // In code a dot before a name is not a full stop.
        let code = "def total(self):\n".to_string()
            + &"    # add them up\n".repeat(8)
            + "    return self.value + extra\n";
        let answers: Vec<String> = cloze_tasks(&[code.as_str()], 10, 0, "code")
            .into_iter()
            .map(|t| t.answer)
            .collect();
        assert_eq!(answers, ["extra"]);
    }
}
