//! Quality of a backend against golden greedy decodes, for any [`Backend`] (the CPU reference
//! at an emulated precision, the GPU megakernel).
//!
//! Two measures, both against a golden sequence `g` decoded greedily from a prompt by a trusted
//! reference (Hugging Face's fp32 CPU decode in `fixtures/smollm2_golden.json`):
//!
//! - teacher-forced top-1 agreement ([`teacher_forced`]): the backend is fed the prompt, then
//!   `g` itself, one token at a time; after each token its argmax is compared with the golden
//!   next token. The first golden token `g[0]` is predicted by the step of the LAST prompt
//!   token, `g[i]` by the step of `g[i - 1]`. Every golden step counts once, whatever happened
//!   before it, so one early flip does not hide the rest of the sequence.
//! - prefix agreement ([`prefix`]): free-running greedy decode from the prompt; the number of
//!   leading generated tokens equal to `g`. This is what Hugging Face's own
//!   `agrees_with_fp32_cpu_for` measures, so the two are comparable.
//!
//! For a deterministic backend the prefix equals the index of the first teacher-forced
//! disagreement (both runs feed the same tokens until then), so [`measure`] computes both from
//! one teacher-forced pass.

use crate::{Backend, RuntimeError};

/// Teacher-forced top-1 agreement of one prompt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TeacherForced {
    /// Golden tokens compared (the length of the golden sequence).
    pub steps: usize,
    /// Steps whose argmax equals the golden next token.
    pub agree: usize,
    /// Index (into the golden sequence) of the first step that disagrees, if any.
    pub first_disagreement: Option<usize>,
    /// Indices of every disagreeing step.
    pub disagreements: Vec<usize>,
}

impl TeacherForced {
    /// Agreeing steps as a percentage (100 for an empty golden sequence).
    pub fn percent(&self) -> f64 {
        percent(self.agree, self.steps)
    }
}

/// Both measures for one prompt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Agreement {
    pub teacher_forced: TeacherForced,
    /// Leading tokens of the free-running greedy decode equal to the golden sequence.
    pub prefix: usize,
}

/// `part` of `whole` as a percentage; 100 when `whole` is 0 (nothing to disagree with).
pub fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Steps [`teacher_forced`] runs for one prompt: the prompt, then every golden token but the
/// last (whose prediction is not compared with anything). For progress bars.
pub fn teacher_forced_steps(prompt_len: usize, golden_len: usize) -> usize {
    if golden_len == 0 {
        0
    } else {
        prompt_len + golden_len - 1
    }
}

/// Checks that the prompt is not empty and that the prompt and the golden tokens fed after it
/// fit the backend's context.
fn check_fits(backend: &dyn Backend, prompt: &[u32], golden: &[u32]) -> Result<(), RuntimeError> {
    if prompt.is_empty() {
        return Err(RuntimeError::EmptyPrompt);
    }
    let max = backend.max_positions();
    if prompt.len() > max {
        return Err(RuntimeError::PromptTooLong { prompt: prompt.len(), max });
    }
    let needed = teacher_forced_steps(prompt.len(), golden.len());
    if needed > max {
        // The last position fed would be `needed - 1`.
        return Err(RuntimeError::Position { position: needed - 1, filled: max, max });
    }
    Ok(())
}

/// Teacher-forced top-1 agreement of `backend` with `golden` after `prompt` (see the module
/// docs). Resets the backend first.
pub fn teacher_forced(
    backend: &mut dyn Backend,
    prompt: &[u32],
    golden: &[u32],
) -> Result<TeacherForced, RuntimeError> {
    teacher_forced_with(backend, prompt, golden, &mut || {})
}

/// [`teacher_forced`], calling `on_step` after every backend step (for progress reports).
pub fn teacher_forced_with(
    backend: &mut dyn Backend,
    prompt: &[u32],
    golden: &[u32],
    on_step: &mut dyn FnMut(),
) -> Result<TeacherForced, RuntimeError> {
    check_fits(backend, prompt, golden)?;
    backend.reset();
    let mut result = TeacherForced {
        steps: golden.len(),
        agree: 0,
        first_disagreement: None,
        disagreements: vec![],
    };
    if golden.is_empty() {
        return Ok(result);
    }
    // The prediction after the last prompt token is the one compared with golden[0].
    let mut predicted = 0;
    for (pos, &tok) in prompt.iter().enumerate() {
        predicted = backend.step(tok, pos)?;
        on_step();
    }
    for (i, &want) in golden.iter().enumerate() {
        if predicted == want {
            result.agree += 1;
        } else {
            result.first_disagreement.get_or_insert(i);
            result.disagreements.push(i);
        }
        // Feed the golden token (not the prediction); the last one predicts nothing compared.
        if i + 1 < golden.len() {
            predicted = backend.step(want, prompt.len() + i)?;
            on_step();
        }
    }
    Ok(result)
}

/// Prefix agreement: greedy decode from `prompt`, counting the leading generated tokens equal to
/// `golden`; stops at the first mismatch or at the end of `golden`. Resets the backend first.
pub fn prefix(
    backend: &mut dyn Backend,
    prompt: &[u32],
    golden: &[u32],
) -> Result<usize, RuntimeError> {
    check_fits(backend, prompt, golden)?;
    backend.reset();
    if golden.is_empty() {
        return Ok(0);
    }
    let mut next = 0;
    for (pos, &tok) in prompt.iter().enumerate() {
        next = backend.step(tok, pos)?;
    }
    let mut agree = 0;
    while agree < golden.len() && next == golden[agree] {
        agree += 1;
        if agree < golden.len() {
            next = backend.step(next, prompt.len() + agree - 1)?;
        }
    }
    Ok(agree)
}

/// Both measures from one teacher-forced pass: for a deterministic backend, the free-running
/// decode feeds exactly the golden tokens until its first disagreement, so the prefix is that
/// step's index (the whole golden length when none disagrees). Half the steps of running
/// [`teacher_forced`] and [`prefix`] separately.
pub fn measure(
    backend: &mut dyn Backend,
    prompt: &[u32],
    golden: &[u32],
    on_step: &mut dyn FnMut(),
) -> Result<Agreement, RuntimeError> {
    let teacher_forced = teacher_forced_with(backend, prompt, golden, on_step)?;
    let prefix = teacher_forced.first_disagreement.unwrap_or(teacher_forced.steps);
    Ok(Agreement { teacher_forced, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic backend: the next token is `rule(tokens fed so far)`. It checks that
    /// positions are consecutive from 0 after a reset, as a real backend's caches require.
    struct Fake {
        fed: Vec<u32>,
        rule: fn(&[u32]) -> u32,
        max: usize,
        steps: usize,
    }

    impl Fake {
        fn new(rule: fn(&[u32]) -> u32) -> Fake {
            // Stale state a missing reset would expose.
            Fake { fed: vec![99, 98], rule, max: 64, steps: 0 }
        }
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn max_positions(&self) -> usize {
            self.max
        }
        fn reset(&mut self) {
            self.fed.clear();
        }
        fn step(&mut self, token: u32, position: usize) -> Result<u32, RuntimeError> {
            if position != self.fed.len() {
                return Err(RuntimeError::Position {
                    position,
                    filled: self.fed.len(),
                    max: self.max,
                });
            }
            self.fed.push(token);
            self.steps += 1;
            Ok((self.rule)(&self.fed))
        }
        fn logits(&self) -> Option<&[f32]> {
            None
        }
    }

    /// Predicts the last token plus one.
    fn successor(fed: &[u32]) -> u32 {
        fed.last().map_or(0, |t| t + 1)
    }

    #[test]
    fn the_last_prompt_token_predicts_the_first_golden_token() {
        let mut b = Fake::new(successor);
        let tf = teacher_forced(&mut b, &[5, 6, 7], &[8, 9, 10]).unwrap();
        assert_eq!(
            tf,
            TeacherForced { steps: 3, agree: 3, first_disagreement: None, disagreements: vec![] }
        );
        // Prompt then every golden token but the last: 3 + 2 steps.
        assert_eq!(b.steps, 5);
        assert_eq!(b.fed, vec![5, 6, 7, 8, 9]);
        assert_eq!(teacher_forced_steps(3, 3), 5);
        assert_eq!(prefix(&mut Fake::new(successor), &[5, 6, 7], &[8, 9, 10]).unwrap(), 3);
    }

    #[test]
    fn teacher_forcing_feeds_the_golden_token_after_a_disagreement() {
        // After 8 the backend predicts 9, not 0 (disagree); fed 0 it predicts 1 (agree).
        let mut b = Fake::new(successor);
        let tf = teacher_forced(&mut b, &[7], &[8, 0, 1]).unwrap();
        assert_eq!(tf.steps, 3);
        assert_eq!(tf.agree, 2);
        assert_eq!(tf.first_disagreement, Some(1));
        assert_eq!(tf.disagreements, vec![1]);
        assert_eq!(b.fed, vec![7, 8, 0]);
        // Free-running: 8 agrees, then 9 differs from 0.
        assert_eq!(prefix(&mut Fake::new(successor), &[7], &[8, 0, 1]).unwrap(), 1);
    }

    #[test]
    fn a_wrong_first_token_gives_prefix_zero() {
        let mut b = Fake::new(successor);
        let a = measure(&mut b, &[1, 2], &[4, 5, 6], &mut || {}).unwrap();
        assert_eq!(a.prefix, 0);
        assert_eq!(a.teacher_forced.agree, 2);
        assert_eq!(a.teacher_forced.disagreements, vec![0]);
        assert_eq!(prefix(&mut Fake::new(successor), &[1, 2], &[4, 5, 6]).unwrap(), 0);
    }

    #[test]
    fn measure_prefix_equals_the_free_running_prefix() {
        // A rule that depends on the whole history, not just the last token.
        fn rule(fed: &[u32]) -> u32 {
            (fed.iter().sum::<u32>() * 7 + fed.len() as u32) % 11
        }
        let prompt = [3, 1, 4];
        let mut free = Fake::new(rule);
        free.reset();
        let mut golden = Vec::new();
        let mut next = 0;
        for (p, &t) in prompt.iter().enumerate() {
            next = free.step(t, p).unwrap();
        }
        for i in 0..10 {
            golden.push(next);
            next = free.step(next, prompt.len() + i).unwrap();
        }
        for flip in 0..=golden.len() {
            let mut g = golden.clone();
            if flip < g.len() {
                g[flip] = (g[flip] + 1) % 11;
            }
            let mut calls = 0;
            let a = measure(&mut Fake::new(rule), &prompt, &g, &mut || calls += 1).unwrap();
            let p = prefix(&mut Fake::new(rule), &prompt, &g).unwrap();
            assert_eq!(a.prefix, p, "flip at {flip}");
            assert_eq!(p, flip.min(g.len()));
            assert_eq!(calls, teacher_forced_steps(prompt.len(), g.len()));
        }
    }

    #[test]
    fn empty_golden_compares_nothing_and_empty_prompt_is_an_error() {
        let mut b = Fake::new(successor);
        let tf = teacher_forced(&mut b, &[1], &[]).unwrap();
        assert_eq!((tf.steps, tf.agree, tf.percent()), (0, 0, 100.0));
        assert_eq!(prefix(&mut b, &[1], &[]).unwrap(), 0);
        assert!(matches!(teacher_forced(&mut b, &[], &[1]), Err(RuntimeError::EmptyPrompt)));
        assert!(matches!(prefix(&mut b, &[], &[1]), Err(RuntimeError::EmptyPrompt)));
    }

    #[test]
    fn sequences_past_the_context_are_refused_before_any_step() {
        let mut b = Fake::new(successor);
        b.max = 4;
        // 2 prompt tokens + 3 golden tokens fed (the 4th is not) = 5 positions > 4.
        let err = teacher_forced(&mut b, &[1, 2], &[3, 4, 5, 6]).unwrap_err();
        assert!(matches!(err, RuntimeError::Position { position: 4, max: 4, .. }), "{err}");
        assert_eq!(b.steps, 0);
        // Exactly filling the context is fine.
        let tf = teacher_forced(&mut b, &[1, 2], &[3, 4, 5]).unwrap();
        assert_eq!(tf.agree, 3);
        let err = prefix(&mut b, &[1, 2, 3, 4, 5], &[6]).unwrap_err();
        assert!(matches!(err, RuntimeError::PromptTooLong { prompt: 5, max: 4 }), "{err}");
    }

    #[test]
    fn backend_errors_propagate() {
        /// A backend whose every step fails.
        struct Broken;
        impl Backend for Broken {
            fn name(&self) -> &'static str {
                "broken"
            }
            fn max_positions(&self) -> usize {
                8
            }
            fn reset(&mut self) {}
            fn step(&mut self, token: u32, _: usize) -> Result<u32, RuntimeError> {
                Err(RuntimeError::TokenOutOfRange { token, vocab_size: 0 })
            }
            fn logits(&self) -> Option<&[f32]> {
                None
            }
        }
        assert!(teacher_forced(&mut Broken, &[1], &[2]).is_err());
        assert!(prefix(&mut Broken, &[1], &[2]).is_err());
    }
}
