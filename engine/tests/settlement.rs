//! Settlement: golden days computed by hand (arithmetic in the comments), compared byte for
//! byte with the reports in tests/golden/ (regenerate with `UPDATE_GOLDEN=1`), plus the
//! record lifecycle and the share rules.

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::path::PathBuf;
use vpp_engine::ids::{AggregationId, ResourceId};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::settlement::*;
use vpp_engine::template::ResourceKind;
use vpp_engine::Timestamp;

fn t(h: u32, m: u32) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 2, h, m, 0).unwrap()
}

fn iv(h: u32, m: u32) -> DeliveryInterval {
    DeliveryInterval::starting_at(t(h, m)).unwrap()
}

fn rates() -> RatesTable {
    RatesTable {
        cny_per_usd: dec!(7.1),
        cny_per_eur: dec!(7.8),
        as_of: t(0, 0),
    }
}

/// Yunnan-like rule: ±3% band, clearing price, over-delivery ×1, under-delivery ×2, PV exempt.
fn rule() -> PenaltyRule {
    PenaltyRule {
        province: "yunnan".into(),
        tolerance_band_pct: dec!(3),
        price_base: PriceBase::ClearingPrice,
        over_delivery_multiplier: dec!(1),
        under_delivery_multiplier: dec!(2),
        exempt_kinds: vec![ResourceKind::Pv],
    }
}

fn cleared(quantity_mw: Decimal, price_cny_per_mwh: Decimal) -> Option<Cleared> {
    Some(Cleared {
        quantity_mw,
        price_cny_per_mwh,
    })
}

fn rd(id: u64, scheduled_mw: Decimal, delivered_mw: Decimal) -> ResourceDelivery {
    ResourceDelivery {
        resource_id: ResourceId(id),
        scheduled_mw,
        delivered_mw,
    }
}

fn info(id: u64, kind: ResourceKind) -> ResourceInfo {
    ResourceInfo {
        resource_id: ResourceId(id),
        kind,
    }
}

fn interval(at: DeliveryInterval, delivered_mw: Decimal) -> IntervalInput {
    IntervalInput {
        interval: at,
        day_ahead: None,
        real_time: None,
        delivered_mw,
        regulation: None,
        demand_response: None,
        resources: Vec::new(),
        netted_legs: Vec::new(),
        reference_price_cny_per_mwh: None,
    }
}

fn day(resources: Vec<ResourceInfo>, intervals: Vec<IntervalInput>) -> DayInput {
    DayInput {
        aggregation_id: AggregationId(1),
        trading_day: NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
        resources,
        intervals,
    }
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file byte for byte, or rewrites it with UPDATE_GOLDEN=1.
fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} differs from the golden file (UPDATE_GOLDEN=1 regenerates it)\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

fn check_reports(name: &str, record: &SettlementRecord) {
    let cny = record.report(Currency::Cny);
    check_golden(&format!("{name}.json"), &cny.to_json().unwrap());
    check_golden(&format!("{name}.lines.csv"), &cny.lines_csv());
    check_golden(&format!("{name}.resources.csv"), &cny.resources_csv());
}

fn amounts(record: &SettlementRecord) -> Vec<(LineKind, Decimal)> {
    record
        .lines()
        .iter()
        .map(|l| (l.kind, l.amount_cny))
        .collect()
}

fn shares(record: &SettlementRecord, currency: Currency) -> Vec<(u64, Decimal, Decimal)> {
    record
        .contributions(currency)
        .iter()
        .map(|c| (c.resource_id.0, c.revenue_share, c.penalty_share))
        .collect()
}

/// Shares add up to the totals exactly, in every currency.
fn assert_shares_add_up(record: &SettlementRecord) {
    for currency in [Currency::Cny, Currency::Usd, Currency::Eur] {
        let totals = record.totals(currency);
        let c = record.contributions(currency);
        assert_eq!(
            c.iter().map(|c| c.revenue_share).sum::<Decimal>(),
            totals.revenue
        );
        assert_eq!(
            c.iter().map(|c| c.penalty_share).sum::<Decimal>(),
            totals.penalties
        );
        assert_eq!(c.iter().map(|c| c.net).sum::<Decimal>(), totals.net);
        let lines: Decimal = record.report(currency).lines.iter().map(|l| l.amount).sum();
        assert_eq!(lines, totals.net);
    }
}

fn clean_day() -> SettlementRecord {
    let mut i1 = interval(iv(0, 0), dec!(10.2));
    i1.day_ahead = cleared(dec!(10), dec!(350.5));
    i1.resources = vec![rd(101, dec!(6), dec!(6.12)), rd(102, dec!(4), dec!(4.08))];
    let mut i2 = interval(iv(0, 15), dec!(9.1));
    i2.day_ahead = cleared(dec!(8), dec!(420.125));
    i2.real_time = cleared(dec!(9), dec!(455.3));
    i2.resources = vec![
        rd(101, dec!(5.4), dec!(5.46)),
        rd(102, dec!(3.6), dec!(3.64)),
    ];
    let input = day(
        vec![
            info(101, ResourceKind::Pv),
            info(102, ResourceKind::Storage),
        ],
        vec![i1, i2],
    );
    SettlementRecord::settle(&input, &rule(), rates()).unwrap()
}

#[test]
fn golden_clean_delivery() {
    let record = clean_day();
    // 00:00 energy: 10 MW × 0.25 h × 350.5 = 876.25. Delivered 10.2: |0.2| <= 3% × 10 = 0.3.
    // 00:15 energy: 8 × 0.25 × 420.125 = 840.25; real time (9 − 8) × 0.25 × 455.3 = 113.825
    //       → 113.82 (half-even). Awarded = RT 9, delivered 9.1: 0.1 <= 0.27, no penalty.
    assert_eq!(
        amounts(&record),
        vec![
            (LineKind::Energy, dec!(876.25)),
            (LineKind::Energy, dec!(840.25)),
            (LineKind::RealTimeDeviation, dec!(113.82)),
        ]
    );
    // Revenue 876.25 + 840.25 + 113.82 = 1830.32, no penalties.
    let totals = record.totals(Currency::Cny);
    assert_eq!(
        (totals.revenue, totals.penalties, totals.net),
        (dec!(1830.32), dec!(0.00), dec!(1830.32))
    );
    // Energy: 101 (6.12 + 5.46) × 0.25 = 2.895 MWh, 102 (4.08 + 3.64) × 0.25 = 1.93 MWh;
    // 2.895 / 4.825 = 0.6 → 1830.32 × 0.6 = 1098.192 → 1098.19, × 0.4 = 732.128 → 732.13.
    assert_eq!(
        shares(&record, Currency::Cny),
        vec![
            (101, dec!(1098.19), dec!(0.00)),
            (102, dec!(732.13), dec!(0.00))
        ]
    );
    // USD at 7.1: 876.25 → 123.4154 → 123.42; 840.25 → 118.3451 → 118.35; 113.82 → 16.0310
    // → 16.03; total 257.80 (the sum of converted lines, not 1830.32 / 7.1 = 257.79).
    assert_eq!(record.totals(Currency::Usd).net, dec!(257.80));
    assert_shares_add_up(&record);
    check_reports("clean_day", &record);
    let usd = record.report(Currency::Usd);
    check_golden("clean_day.usd.lines.csv", &usd.lines_csv());
}

#[test]
fn golden_under_delivery_beyond_band() {
    let mut i1 = interval(iv(0, 0), dec!(9.0));
    i1.day_ahead = cleared(dec!(10), dec!(400));
    i1.resources = vec![rd(101, dec!(6), dec!(5.6)), rd(102, dec!(4), dec!(3.4))];
    let mut i2 = interval(iv(0, 15), dec!(9.8));
    i2.day_ahead = cleared(dec!(10), dec!(380));
    i2.resources = vec![rd(101, dec!(6), dec!(5.88)), rd(102, dec!(4), dec!(3.92))];
    let input = day(
        vec![
            info(101, ResourceKind::Pv),
            info(102, ResourceKind::Storage),
        ],
        vec![i1, i2],
    );
    let record = SettlementRecord::settle(&input, &rule(), rates()).unwrap();
    // 00:00 energy 10 × 0.25 × 400 = 1000.00. Deviation 9.0 − 10 = −1.0 MW, allowance
    // 3% × 10 = 0.3, excess 0.7 MW = 0.175 MWh. PV 101 (exempt) deviated 0.4 of the
    // 0.4 + 0.6 = 1.0 MW, so the non-exempt factor is 0.6. Price 400 × 2 (under) = 800:
    // −0.175 × 800 × 0.6 = −84.00.
    // 00:15 energy 10 × 0.25 × 380 = 950.00; deviation −0.2 <= 0.3: no penalty.
    assert_eq!(
        amounts(&record),
        vec![
            (LineKind::Energy, dec!(1000.00)),
            (LineKind::DeviationPenalty, dec!(-84.00)),
            (LineKind::Energy, dec!(950.00)),
        ]
    );
    let penalty = &record.lines()[1];
    assert_eq!(
        (penalty.quantity, penalty.price_cny, penalty.factor),
        (dec!(0.175), dec!(800), dec!(0.6))
    );
    let totals = record.totals(Currency::Cny);
    assert_eq!(
        (totals.revenue, totals.penalties, totals.net),
        (dec!(1950.00), dec!(-84.00), dec!(1866.00))
    );
    // Energy 101: (5.6 + 5.88) × 0.25 = 2.87, 102: (3.4 + 3.92) × 0.25 = 1.83, Σ 4.7.
    // Revenue 1950 × 2.87 / 4.7 = 1190.7447 → 1190.74; × 1.83 / 4.7 = 759.2553 → 759.26.
    // Penalty only on the non-exempt storage: −84.00 to 102.
    assert_eq!(
        shares(&record, Currency::Cny),
        vec![
            (101, dec!(1190.74), dec!(0.00)),
            (102, dec!(759.26), dec!(-84.00))
        ]
    );
    assert_shares_add_up(&record);
    check_reports("under_delivery", &record);
}

#[test]
fn golden_negative_price_interval() {
    let mut i1 = interval(iv(4, 0), dec!(5.5));
    i1.day_ahead = cleared(dec!(5), dec!(-50));
    i1.resources = vec![rd(201, dec!(3), dec!(3.3)), rd(202, dec!(2), dec!(2.2))];
    let mut i2 = interval(iv(4, 15), dec!(4));
    i2.day_ahead = cleared(dec!(5), dec!(120));
    i2.real_time = cleared(dec!(4), dec!(-20));
    i2.resources = vec![rd(201, dec!(2.4), dec!(2.4)), rd(202, dec!(1.6), dec!(1.6))];
    let input = day(
        vec![
            info(201, ResourceKind::Storage),
            info(202, ResourceKind::FlexibleLoad),
        ],
        vec![i1, i2],
    );
    let record = SettlementRecord::settle(&input, &rule(), rates()).unwrap();
    // 04:00 energy 5 × 0.25 × −50 = −62.50 (the aggregation pays to deliver). Over-delivery
    // 5.5 − 5 = 0.5, allowance 0.15, excess 0.35 MW = 0.0875 MWh at |−50| × 1 = 50:
    // −4.375 → −4.38 (half-even: 7 is odd, round to 8). Nobody exempt: factor 1.
    // 04:15 energy 5 × 0.25 × 120 = 150.00; real time (4 − 5) × 0.25 × −20 = +5.00;
    // awarded = RT 4, delivered 4: no penalty.
    assert_eq!(
        amounts(&record),
        vec![
            (LineKind::Energy, dec!(-62.50)),
            (LineKind::DeviationPenalty, dec!(-4.38)),
            (LineKind::Energy, dec!(150.00)),
            (LineKind::RealTimeDeviation, dec!(5.00)),
        ]
    );
    let totals = record.totals(Currency::Cny);
    assert_eq!(
        (totals.revenue, totals.penalties, totals.net),
        (dec!(92.50), dec!(-4.38), dec!(88.12))
    );
    // Energy 201: (3.3 + 2.4) × 0.25 = 1.425, 202: (2.2 + 1.6) × 0.25 = 0.95; 1.425/2.375 = 0.6.
    // Revenue 92.50 × 0.6 = 55.50, × 0.4 = 37.00. Penalty −4.38 × 0.6 = −2.628 → −2.63,
    // × 0.4 = −1.752 → −1.75; −2.63 − 1.75 = −4.38, no remainder.
    assert_eq!(
        shares(&record, Currency::Cny),
        vec![
            (201, dec!(55.50), dec!(-2.63)),
            (202, dec!(37.00), dec!(-1.75))
        ]
    );
    assert_shares_add_up(&record);
    check_reports("negative_price", &record);
}

#[test]
fn golden_regulation_award() {
    let regulation = |mileage_mw| {
        Some(RegulationAward {
            capacity_mw: dec!(5),
            capacity_price_cny_per_mw: dec!(12.5),
            mileage_mw,
            mileage_price_cny_per_mw: dec!(6.8),
        })
    };
    let mut i1 = interval(iv(10, 0), dec!(1.5));
    i1.regulation = regulation(dec!(30));
    i1.resources = vec![rd(301, dec!(1.0), dec!(1.0)), rd(302, dec!(0.5), dec!(0.5))];
    let mut i2 = interval(iv(10, 15), dec!(3.8));
    i2.regulation = regulation(dec!(17.5));
    i2.demand_response = Some(DemandResponseEvent {
        committed_mwh: dec!(0.5),
        curtailed_mwh: dec!(0.65),
        price_cny_per_mwh: dec!(800),
    });
    i2.resources = vec![rd(301, dec!(1.2), dec!(1.2)), rd(303, dec!(2.6), dec!(2.6))];
    let input = day(
        vec![
            info(301, ResourceKind::Storage),
            info(302, ResourceKind::EvCharger),
            info(303, ResourceKind::FlexibleLoad),
        ],
        vec![i1, i2],
    );
    let record = SettlementRecord::settle(&input, &rule(), rates()).unwrap();
    // Each interval: capacity 5 MW × 12.5 CNY/MW per interval, as the venue quotes it = 62.50
    // (observed: × 0.25 h was applied, paying 15.62).
    // Mileage 30 × 6.8 = 204.00, then 17.5 × 6.8 = 119.00. Demand response: curtailed 0.65
    // capped at the committed 0.5 MWh × 800 = 400.00. No energy award: no penalty.
    assert_eq!(
        amounts(&record),
        vec![
            (LineKind::RegulationCapacity, dec!(62.50)),
            (LineKind::RegulationMileage, dec!(204.00)),
            (LineKind::RegulationCapacity, dec!(62.50)),
            (LineKind::RegulationMileage, dec!(119.00)),
            (LineKind::DemandResponse, dec!(400.00)),
        ]
    );
    let totals = record.totals(Currency::Cny);
    assert_eq!(totals.regulation_capacity, dec!(125.00));
    assert_eq!(totals.regulation_mileage, dec!(323.00));
    assert_eq!(totals.net, dec!(848.00));
    // Energy 301: (1.0 + 1.2) × 0.25 = 0.55, 302: 0.125, 303: 0.65; Σ 1.325.
    // 848 × 0.55/1.325 = 352.00; × 0.125/1.325 = 80.00; × 0.65/1.325 = 416.00.
    assert_eq!(
        shares(&record, Currency::Cny),
        vec![
            (301, dec!(352.00), dec!(0.00)),
            (302, dec!(80.00), dec!(0.00)),
            (303, dec!(416.00), dec!(0.00))
        ]
    );
    assert_shares_add_up(&record);
    check_reports("regulation", &record);
}

#[test]
fn monthly_average_price_base_and_exempt_everything() {
    let mut rule = rule();
    rule.price_base = PriceBase::MonthlyAverage(dec!(300));
    let mut i1 = interval(iv(0, 0), dec!(8));
    i1.day_ahead = cleared(dec!(10), dec!(400));
    i1.resources = vec![rd(101, dec!(10), dec!(8))];
    let input = day(vec![info(101, ResourceKind::Storage)], vec![i1.clone()]);
    let record = SettlementRecord::settle(&input, &rule, rates()).unwrap();
    // Excess 2 − 0.3 = 1.7 MW = 0.425 MWh × 300 × 2 = 255.00.
    assert_eq!(
        amounts(&record)[1],
        (LineKind::DeviationPenalty, dec!(-255.00))
    );
    // The only deviating resource is PV (exempt): the penalty line has factor 0 and amount 0.
    let input = day(vec![info(101, ResourceKind::Pv)], vec![i1]);
    let record = SettlementRecord::settle(&input, &rule, rates()).unwrap();
    assert_eq!(
        amounts(&record)[1],
        (LineKind::DeviationPenalty, dec!(0.00))
    );
}

#[test]
fn allocate_gives_the_rounding_remainder_to_the_largest() {
    // 100 over three equal weights: 33.33 each, 0.01 left → lowest id among the largest.
    assert_eq!(
        allocate(dec!(100), &[dec!(1), dec!(1), dec!(1)]),
        vec![dec!(33.34), dec!(33.33), dec!(33.33)]
    );
    assert_eq!(
        allocate(dec!(-100), &[dec!(1), dec!(2), dec!(1)]),
        vec![dec!(-25.00), dec!(-50.00), dec!(-25.00)]
    );
    assert_eq!(
        allocate(dec!(10), &[dec!(0), dec!(0)]),
        vec![dec!(10.00), dec!(0.00)]
    );
    assert!(allocate(dec!(10), &[]).is_empty());
    assert_eq!(round_money(dec!(0.125)), dec!(0.12));
    assert_eq!(round_money(dec!(0.135)), dec!(0.14));
    assert_eq!(round_money(dec!(-0.125)), dec!(-0.12));
}

#[test]
fn lifecycle_draft_disputed_confirmed_and_final() {
    let mut record = clean_day();
    assert_eq!(record.status(), SettlementStatus::Draft);
    assert!(record.dispute("  ", t(1, 0)).is_err());
    record.dispute("meter 102 reads high", t(1, 0)).unwrap();
    assert!(matches!(
        record.amend(clean_day()),
        Err(SettlementError::NotDraft(SettlementStatus::Disputed))
    ));
    record.reopen(t(2, 0)).unwrap();
    record.amend(clean_day()).unwrap();
    record.confirm(t(3, 0)).unwrap();
    assert_eq!(record.history().len(), 3);
    assert_eq!(
        record.history()[0].reason.as_deref(),
        Some("meter 102 reads high")
    );
    let frozen = record.clone();
    assert!(matches!(
        record.confirm(t(4, 0)),
        Err(SettlementError::Confirmed { .. })
    ));
    assert!(matches!(
        record.dispute("late", t(4, 0)),
        Err(SettlementError::Confirmed { .. })
    ));
    assert!(matches!(
        record.reopen(t(4, 0)),
        Err(SettlementError::Confirmed { .. })
    ));
    assert!(matches!(
        record.amend(clean_day()),
        Err(SettlementError::Confirmed { .. })
    ));
    assert_eq!(record, frozen);
    // Draft → draft is not a transition; disputed → confirmed is.
    let mut other = clean_day();
    assert!(matches!(
        other.reopen(t(1, 0)),
        Err(SettlementError::IllegalTransition { .. })
    ));
    other.dispute("x", t(1, 0)).unwrap();
    other.confirm(t(2, 0)).unwrap();
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(
        serde_json::from_str::<SettlementRecord>(&json).unwrap(),
        record
    );
}

#[test]
fn bad_inputs_are_refused() {
    let mut i1 = interval(iv(0, 0), dec!(1));
    i1.resources = vec![rd(999, dec!(1), dec!(1))];
    let input = day(vec![info(101, ResourceKind::Pv)], vec![i1.clone()]);
    assert_eq!(
        SettlementRecord::settle(&input, &rule(), rates()).unwrap_err(),
        SettlementError::UnknownResource(ResourceId(999))
    );
    i1.resources.clear();
    let input = day(vec![], vec![i1.clone(), i1.clone()]);
    assert!(matches!(
        SettlementRecord::settle(&input, &rule(), rates()),
        Err(SettlementError::DuplicateInterval(_))
    ));
    let input = day(vec![], vec![i1]);
    let mut bad = rule();
    bad.tolerance_band_pct = dec!(-1);
    assert!(SettlementRecord::settle(&input, &bad, rates()).is_err());
    let mut bad_rates = rates();
    bad_rates.cny_per_usd = dec!(0);
    let err = SettlementRecord::settle(&input, &rule(), bad_rates).unwrap_err();
    assert!(matches!(err, SettlementError::Invalid(ref e) if e.field == "cny_per_usd"));
}

/// Observed: sell 1 MW @279.08 and buy 1 MW @284.65 in one interval settled 0.00. Both legs
/// settle: 0.25 × 279.08 = 69.77, −0.25 × 284.65 = −71.1625 → −71.16 (half-even); net −1.39.
/// The schedule is 0 MW and 0 MW was delivered: no penalty.
#[test]
fn golden_netted_position_settles_both_legs() {
    let mut i = interval(iv(9, 0), dec!(0));
    i.netted_legs = vec![
        NettedLeg {
            kind: LineKind::RealTimeDeviation,
            quantity_mw: dec!(1),
            price_cny_per_mwh: dec!(279.08),
        },
        NettedLeg {
            kind: LineKind::RealTimeDeviation,
            quantity_mw: dec!(-1),
            price_cny_per_mwh: dec!(284.65),
        },
    ];
    i.reference_price_cny_per_mwh = Some(dec!(260.54));
    let record = SettlementRecord::settle(&day(vec![], vec![i.clone()]), &rule(), rates()).unwrap();
    assert_eq!(
        amounts(&record),
        vec![
            (LineKind::RealTimeDeviation, dec!(69.77)),
            (LineKind::RealTimeDeviation, dec!(-71.16)),
        ]
    );
    assert_eq!(record.totals(Currency::Cny).net, dec!(-1.39));
    // Delivering 0.1 MW against that 0 MW schedule is penalised at the market's reference
    // price: 0.1 × 0.25 × 260.54 × 1 (over-delivery multiplier of the rule) = 6.5135 → 6.51.
    i.delivered_mw = dec!(0.1);
    let record = SettlementRecord::settle(&day(vec![], vec![i]), &rule(), rates()).unwrap();
    let penalty = record
        .lines()
        .iter()
        .find(|l| l.kind == LineKind::DeviationPenalty)
        .unwrap();
    assert_eq!(
        penalty.price_cny,
        dec!(260.54) * rule().over_delivery_multiplier
    );
}

/// Observed: the penalty used the plant's own average fill price (4.71 CNY/MWh) where the
/// market's reference price was 260.54. With a reference price, it is used.
#[test]
fn the_penalty_uses_the_markets_reference_price_not_the_fill_price() {
    let mut i = interval(iv(9, 0), dec!(0.5));
    i.real_time = Some(Cleared {
        quantity_mw: dec!(1),
        price_cny_per_mwh: dec!(4.71),
    });
    i.reference_price_cny_per_mwh = Some(dec!(260.54));
    let record = SettlementRecord::settle(&day(vec![], vec![i]), &rule(), rates()).unwrap();
    let penalty = record
        .lines()
        .iter()
        .find(|l| l.kind == LineKind::DeviationPenalty)
        .unwrap();
    // Under-delivery 0.5 MW, allowance 3 % of 1 MW = 0.03: excess 0.47 MW × 0.25 h.
    assert_eq!(penalty.quantity, dec!(0.1175));
    assert_eq!(
        penalty.price_cny,
        dec!(260.54) * rule().under_delivery_multiplier
    );
}
