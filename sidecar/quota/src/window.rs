//! Budget windows: calendar (UTC minute, hour, day, month) or fixed length.

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
    /// Fixed windows of this many milliseconds from the epoch.
    Fixed(i64),
}

/// Days since the epoch → (year, month 1-12) (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m)
}

/// (year, month) → days since the epoch of its first day.
fn days_from_civil(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Window {
    /// [start, end) of the window containing `now_ms`.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        let fixed = |len: i64| {
            let start = now_ms - now_ms.rem_euclid(len);
            (start, start + len)
        };
        match self {
            Window::Minute => fixed(MINUTE),
            Window::Hour => fixed(HOUR),
            Window::Day => fixed(DAY),
            Window::Fixed(len) => fixed(len.max(1)),
            Window::Month => {
                let (y, m) = civil(now_ms.div_euclid(DAY));
                let start = days_from_civil(y, m) * DAY;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm) * DAY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_and_fixed_bounds() {
        // 2026-11-29T09:30:15Z.
        let now = 1_795_944_615_000;
        assert_eq!(
            Window::Minute.bounds(now),
            (1_795_944_600_000, 1_795_944_660_000)
        );
        assert_eq!(
            Window::Hour.bounds(now),
            (1_795_942_800_000, 1_795_946_400_000)
        );
        // 2026-11-01 → 2026-12-01.
        assert_eq!(
            Window::Month.bounds(now),
            (1_793_491_200_000, 1_796_083_200_000)
        );
        // December rolls into the next year: 2026-12-15 → [2026-12-01, 2027-01-01).
        assert_eq!(
            Window::Month.bounds(1_797_292_800_000),
            (1_796_083_200_000, 1_798_761_600_000)
        );
        assert_eq!(Window::Fixed(10_000).bounds(25_000), (20_000, 30_000));
    }
}
