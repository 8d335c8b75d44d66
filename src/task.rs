//! Zero-shot task presets from the GPT-2 paper ("Language Models are Unsupervised Multitask
//! Learners", Radford et al. 2019, section 3): the prompt each task wraps around the user's input,
//! and the decoding the paper used for it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A task preset for `gpt2q run --task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// The article, then `"\nTL;DR:"`; top-k 2 sampling for 100 tokens (section 3.6).
    Summarize,
    /// English → French: example pairs `"english = french"`, then `"{input} ="`; greedy, one line
    /// (section 3.7).
    Translate,
    /// Question answering: example `"Q: … A: …"` pairs, then `"Q: {input}\nA:"`; greedy, one line
    /// (section 3.8).
    Qa,
}

/// Decoding settings a task uses unless the user sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskDefaults {
    /// Tokens to generate.
    pub max_new_tokens: usize,
    /// Top-k filter (`None`: the usual default).
    pub top_k: Option<usize>,
    /// Greedy decoding.
    pub greedy: bool,
    /// Stop string ending the answer.
    pub stop: Option<&'static str>,
}

const TRANSLATE_EXAMPLES: &str = "\
The house is blue. = La maison est bleue.
I would like a cup of coffee. = Je voudrais une tasse de café.
Where is the train station? = Où est la gare ?
";

const QA_EXAMPLES: &str = "\
Q: What is the capital of France?
A: Paris
Q: Who wrote Romeo and Juliet?
A: William Shakespeare
Q: How many legs does a spider have?
A: Eight
";

impl Task {
    /// The prompt text for `input` (surrounding whitespace trimmed).
    pub fn prompt(self, input: &str) -> String {
        let input = input.trim();
        match self {
            Task::Summarize => format!("{input}\nTL;DR:"),
            Task::Translate => format!("{TRANSLATE_EXAMPLES}{input} ="),
            Task::Qa => format!("{QA_EXAMPLES}Q: {input}\nA:"),
        }
    }

    /// The paper's decoding for this task.
    pub fn defaults(self) -> TaskDefaults {
        match self {
            Task::Summarize => TaskDefaults {
                max_new_tokens: 100,
                top_k: Some(2),
                greedy: false,
                stop: None,
            },
            Task::Translate | Task::Qa => TaskDefaults {
                max_new_tokens: 32,
                top_k: None,
                greedy: true,
                stop: Some("\n"),
            },
        }
    }
}

impl FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "summarize" => Ok(Task::Summarize),
            "translate" => Ok(Task::Translate),
            "qa" => Ok(Task::Qa),
            _ => Err(Error::invalid(format!(
                "unknown task {s:?} (expected summarize, translate or qa)"
            ))),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Summarize => "summarize",
            Task::Translate => "translate",
            Task::Qa => "qa",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Task;

    #[test]
    fn summarize_appends_tldr() {
        assert_eq!(
            Task::Summarize.prompt("The cat sat on the mat.\n"),
            "The cat sat on the mat.\nTL;DR:"
        );
    }

    #[test]
    fn translate_ends_with_the_input_and_equals() {
        assert_eq!(
            Task::Translate.prompt("The dog is small."),
            "The house is blue. = La maison est bleue.\n\
             I would like a cup of coffee. = Je voudrais une tasse de café.\n\
             Where is the train station? = Où est la gare ?\n\
             The dog is small. ="
        );
    }

    #[test]
    fn qa_ends_with_the_question_and_answer_cue() {
        assert_eq!(
            Task::Qa.prompt(" Who painted the Mona Lisa? "),
            "Q: What is the capital of France?\nA: Paris\n\
             Q: Who wrote Romeo and Juliet?\nA: William Shakespeare\n\
             Q: How many legs does a spider have?\nA: Eight\n\
             Q: Who painted the Mona Lisa?\nA:"
        );
    }

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for t in [Task::Summarize, Task::Translate, Task::Qa] {
            assert_eq!(t.to_string().parse::<Task>().unwrap(), t);
        }
        assert!("poem".parse::<Task>().is_err());
        assert_eq!(Task::Summarize.defaults().top_k, Some(2));
        assert_eq!(Task::Qa.defaults().stop, Some("\n"));
    }
}
