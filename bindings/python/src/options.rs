//! Arguments shared by `generate` and `chat`: sampling settings and stop strings, turned into the
//! library's types with its defaults (those of the `gpt2q` command) and its validation.

use gpt2q::sampler::SamplerConfig;
use gpt2q::task::TaskDefaults;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Sampling arguments as Python passed them (`None`: the default, or the task's).
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: Option<u64>,
}

impl Sampling {
    /// The sampler settings: a task's top-k and greedy decoding unless `top_k` or `temperature`
    /// is given, else the library's defaults (temperature 0.8, top-k 40); a random seed when
    /// none is given. Validated, with the command line's messages.
    pub fn config(&self, preset: Option<TaskDefaults>) -> gpt2q::Result<SamplerConfig> {
        let defaults = SamplerConfig::default();
        let greedy = preset.is_some_and(|p| p.greedy) && self.temperature.is_none();
        let config = SamplerConfig {
            temperature: if greedy {
                0.0
            } else {
                self.temperature.unwrap_or(defaults.temperature)
            },
            top_k: self
                .top_k
                .or(preset.and_then(|p| p.top_k))
                .unwrap_or(defaults.top_k),
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or_else(clock_seed),
        };
        config.validate()?;
        Ok(config)
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `stop` as a list of strings: `None`, one string, or a sequence of strings.
pub fn stop_strings(stop: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<String>>> {
    let Some(stop) = stop else {
        return Ok(None);
    };
    if stop.is_none() {
        return Ok(None);
    }
    if stop.is_instance_of::<PyString>() {
        return Ok(Some(vec![stop.extract()?]));
    }
    let list: Vec<String> = stop
        .extract()
        .map_err(|_| PyTypeError::new_err("stop must be a string or a list of strings"))?;
    Ok((!list.is_empty()).then_some(list))
}
