//! [`StrategyParams`]: a strategy's typed key → value parameters, as config gives them.
//!
//! Invariants: numbers are exact [`Decimal`]s (a JSON/TOML float `0.88` becomes `0.88`, never
//! `0.8799999`); at most [`MAX_PARAMS`] keys, keys and text bounded; every accessor error
//! names the parameter and says what would be valid; [`StrategyParams::expect_only`] refuses
//! unknown keys so a typo in config is an error, not a silently ignored setting.

use super::StrategyError;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

/// Most parameters one strategy may take.
pub const MAX_PARAMS: usize = 64;
/// Longest parameter name, bytes.
pub const MAX_PARAM_NAME_LEN: usize = 64;
/// Longest text value, bytes.
pub const MAX_PARAM_TEXT_LEN: usize = 256;

/// One parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Number(Decimal),
    Text(String),
}

impl ParamValue {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::Text(_) => "text",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyParams {
    values: BTreeMap<String, ParamValue>,
}

impl StrategyParams {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a parameter, refusing more than [`MAX_PARAMS`] or over-long values.
    pub fn insert(&mut self, name: &str, value: ParamValue) -> Result<(), StrategyError> {
        if name.is_empty() || name.len() > MAX_PARAM_NAME_LEN {
            return Err(StrategyError::param(
                name,
                format!("parameter names must be 1..={MAX_PARAM_NAME_LEN} bytes"),
            ));
        }
        if let ParamValue::Text(t) = &value {
            if t.len() > MAX_PARAM_TEXT_LEN {
                return Err(StrategyError::param(
                    name,
                    format!("text longer than {MAX_PARAM_TEXT_LEN} bytes"),
                ));
            }
        }
        if self.values.len() >= MAX_PARAMS && !self.values.contains_key(name) {
            return Err(StrategyError::param(
                name,
                format!("at most {MAX_PARAMS} parameters allowed"),
            ));
        }
        self.values.insert(name.to_owned(), value);
        Ok(())
    }

    /// Builder-style [`Self::insert`] of a number, for tests and code-built configs.
    pub fn with(mut self, name: &str, value: Decimal) -> Result<Self, StrategyError> {
        self.insert(name, ParamValue::Number(value))?;
        Ok(self)
    }

    /// From a JSON object (config tables convert to JSON losslessly). Nested objects and
    /// arrays are refused, naming the parameter.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, StrategyError> {
        let serde_json::Value::Object(map) = value else {
            return Err(StrategyError::param(
                "params",
                "must be a table of name = value",
            ));
        };
        let mut params = Self::new();
        for (name, v) in map {
            let pv = match v {
                serde_json::Value::Bool(b) => ParamValue::Bool(*b),
                serde_json::Value::Number(n) => ParamValue::Number(parse_number(name, n)?),
                serde_json::Value::String(s) => ParamValue::Text(s.clone()),
                _ => {
                    return Err(StrategyError::param(
                        name,
                        "must be a number, a boolean or text",
                    ))
                }
            };
            params.insert(name, pv)?;
        }
        Ok(params)
    }

    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Refuses any parameter not in `known`, listing the accepted names.
    pub fn expect_only(&self, known: &[&str]) -> Result<(), StrategyError> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(StrategyError::param(
                unknown,
                format!("unknown parameter; accepted: {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub fn decimal(&self, name: &str) -> Result<Option<Decimal>, StrategyError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(ParamValue::Number(d)) => Ok(Some(*d)),
            Some(other) => Err(StrategyError::param(
                name,
                format!("must be a number, got {}", other.type_name()),
            )),
        }
    }

    pub fn decimal_or(&self, name: &str, default: Decimal) -> Result<Decimal, StrategyError> {
        Ok(self.decimal(name)?.unwrap_or(default))
    }

    pub fn require_decimal(&self, name: &str) -> Result<Decimal, StrategyError> {
        self.decimal(name)?
            .ok_or_else(|| StrategyError::param(name, "is required (a number)"))
    }

    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, StrategyError> {
        match self.values.get(name) {
            None => Ok(default),
            Some(ParamValue::Bool(b)) => Ok(*b),
            Some(other) => Err(StrategyError::param(
                name,
                format!("must be true or false, got {}", other.type_name()),
            )),
        }
    }

    pub fn text(&self, name: &str) -> Result<Option<&str>, StrategyError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(ParamValue::Text(t)) => Ok(Some(t)),
            Some(other) => Err(StrategyError::param(
                name,
                format!("must be text, got {}", other.type_name()),
            )),
        }
    }
}

fn parse_number(name: &str, n: &serde_json::Number) -> Result<Decimal, StrategyError> {
    let text = n.to_string();
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| StrategyError::param(name, format!("{text} is not a representable number")))
}

/// Checks `lo <= value <= hi` (inclusive bounds given as `Some`).
pub(crate) fn check_range(
    name: &str,
    value: Decimal,
    lo: Option<Decimal>,
    hi: Option<Decimal>,
    exclusive_lo: bool,
) -> Result<Decimal, StrategyError> {
    let below = lo.is_some_and(|lo| {
        if exclusive_lo {
            value <= lo
        } else {
            value < lo
        }
    });
    let above = hi.is_some_and(|hi| value > hi);
    if below || above {
        let lo_text = lo.map_or("-inf".to_owned(), |l| l.to_string());
        let hi_text = hi.map_or("inf".to_owned(), |h| h.to_string());
        let open = if exclusive_lo { "(" } else { "[" };
        return Err(StrategyError::param(
            name,
            format!("{value} outside {open}{lo_text}, {hi_text}]"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn json_numbers_become_exact_decimals_and_errors_name_the_parameter() {
        let json = serde_json::json!({"efficiency": 0.88, "power_mw": 1, "flag": true, "tz": "x"});
        let p = StrategyParams::from_json(&json).unwrap();
        assert_eq!(p.decimal("efficiency").unwrap(), Some(dec!(0.88)));
        assert_eq!(p.require_decimal("power_mw").unwrap(), dec!(1));
        assert!(p.bool_or("flag", false).unwrap());
        let err = p.decimal("flag").unwrap_err();
        assert_eq!(
            err,
            StrategyError::param("flag", "must be a number, got a boolean")
        );
        let err = p.require_decimal("missing").unwrap_err();
        assert!(err.to_string().contains("missing"));
        let err = p
            .expect_only(&["efficiency", "power_mw", "flag"])
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("strategy parameter tz: unknown parameter"));
        let nested = serde_json::json!({"a": {"b": 1}});
        assert!(StrategyParams::from_json(&nested)
            .unwrap_err()
            .to_string()
            .contains("parameter a"));
    }

    #[test]
    fn parameter_count_is_bounded() {
        let mut p = StrategyParams::new();
        for i in 0..MAX_PARAMS {
            p.insert(&format!("p{i}"), ParamValue::Bool(true)).unwrap();
        }
        assert!(p.insert("one_more", ParamValue::Bool(true)).is_err());
        assert!(p.insert("p0", ParamValue::Bool(false)).is_ok());
    }

    #[test]
    fn range_check_names_bounds() {
        assert!(check_range("x", dec!(0), Some(dec!(0)), None, true).is_err());
        assert!(check_range("x", dec!(0), Some(dec!(0)), None, false).is_ok());
        let err = check_range("eff", dec!(1.1), Some(dec!(0)), Some(dec!(1)), true).unwrap_err();
        assert_eq!(err, StrategyError::param("eff", "1.1 outside (0, 1]"));
    }
}
