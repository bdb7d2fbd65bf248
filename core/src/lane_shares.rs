//! The share of the claimed work kept for the lower priority lanes.
//!
//! Lanes are claimed in order, signups first (claim_cursor.rs names them). Strictly in order, a
//! flood of signups would hold retries, email syncs and a backfill back for as long as it lasts.
//! With a share, a lane that has due jobs gets that fraction of what the worker claims: credit
//! builds up with every claim's capacity and is spent on the lane's jobs, which are claimed before
//! the lanes are taken in order. A lane with nothing due keeps no credit (no burst after a quiet
//! spell). A signup's call still goes ahead of every call waiting for the rate budget (worker.rs),
//! so a share never makes a signup wait for more than one budget slot.

use crate::claim_cursor::LANES;

/// Shares in percent of the claimed work, per lane; lane 0's is what the others leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares([u8; LANES]);

impl Shares {
    /// `onboarding.lane_shares`: the percent kept for lanes 1, 2 and 3, comma-separated
    /// ("10,5,5"), each 0–100, together at most 90 (lane 0 keeps at least a tenth).
    pub fn parse(setting: &str) -> Result<Shares, String> {
        let parts: Vec<&str> = setting.split(',').map(str::trim).collect();
        if parts.len() != LANES - 1 {
            return Err(format!("expected {} percentages (lanes 1 to {}), got {}", LANES - 1, LANES - 1, parts.len()));
        }
        let mut percent = [0u8; LANES];
        for (lane, part) in parts.iter().enumerate() {
            percent[lane + 1] = part
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("\"{part}\" is not a percentage from 0 to 100 (lane {})", lane + 1))?;
        }
        let kept: u32 = percent.iter().map(|&p| u32::from(p)).sum();
        if kept > 90 {
            return Err(format!("the lower lanes' shares add up to {kept}%; at most 90% (lane 0 keeps the rest)"));
        }
        percent[0] = 100 - kept as u8;
        Ok(Shares(percent))
    }

    pub fn percent(&self, lane: usize) -> u8 {
        self.0.get(lane).copied().unwrap_or(0)
    }
}

/// Credit per lane, in jobs.
#[derive(Debug, Default)]
pub struct LaneCredit {
    credit: [f64; LANES],
}

impl LaneCredit {
    /// How many jobs of a claim of `capacity` to take from each lane first (lane 0: none; it is
    /// taken first anyway when the lanes go in order).
    pub fn reserve(&mut self, shares: Shares, capacity: usize) -> [usize; LANES] {
        let mut reserved = [0; LANES];
        let mut left = capacity;
        for (lane, (credit, reserve)) in self.credit.iter_mut().zip(reserved.iter_mut()).enumerate().skip(1) {
            *credit += capacity as f64 * f64::from(shares.percent(lane)) / 100.0;
            *reserve = (credit.floor() as usize).min(left);
            left -= *reserve;
        }
        reserved
    }

    /// What the claim took from each lane (both passes): reserved jobs taken are paid for; a lane
    /// that had fewer due jobs than its reserve loses the rest of its credit.
    pub fn taken(&mut self, reserved: [usize; LANES], claimed: [usize; LANES]) {
        for lane in 1..LANES {
            let paid = reserved[lane].min(claimed[lane]);
            self.credit[lane] -= paid as f64;
            if claimed[lane] < reserved[lane] {
                self.credit[lane] = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_read_with_clear_errors() {
        assert_eq!(Shares::parse("10, 5,5").unwrap().percent(0), 80);
        assert_eq!(Shares::parse("0,0,0").unwrap().percent(3), 0);
        assert!(Shares::parse("10,5").unwrap_err().contains("expected 3"));
        assert!(Shares::parse("10,x,5").unwrap_err().contains("\"x\" is not a percentage"));
        assert!(Shares::parse("50,30,20").unwrap_err().contains("add up to 100%"));
    }

    /// Lane 0 saturates the claims (every claim finds more signups than it has room for); lane 3
    /// has a backlog. Over many claims lane 3 gets its share, lane 0 the rest.
    #[test]
    fn a_busy_lower_lane_gets_its_share_over_many_small_claims() {
        let shares = Shares::parse("0,0,10").unwrap();
        let mut credit = LaneCredit::default();
        let (mut lane0, mut lane3) = (0, 0);
        for _ in 0..1000 {
            let capacity = 3; // a few calls finished since the last claim
            let reserved = credit.reserve(shares, capacity);
            let from_lane3 = reserved[3]; // lane 3 has plenty due
            let claimed = [capacity - from_lane3, 0, 0, from_lane3];
            credit.taken(reserved, claimed);
            lane0 += claimed[0];
            lane3 += claimed[3];
        }
        assert_eq!(lane0 + lane3, 3000);
        assert!((295..=300).contains(&lane3), "lane 3 got {lane3} of 3000");
    }

    #[test]
    fn an_idle_lane_banks_no_credit() {
        let shares = Shares::parse("0,0,50").unwrap();
        let mut credit = LaneCredit::default();
        for _ in 0..100 {
            let reserved = credit.reserve(shares, 10);
            credit.taken(reserved, [10, 0, 0, 0]); // nothing due in lane 3
        }
        // Work arrives in lane 3: it gets its share of this claim, not the 500 jobs of credit.
        assert_eq!(credit.reserve(shares, 10)[3], 5);
    }

    #[test]
    fn reserves_never_exceed_the_claim() {
        let shares = Shares::parse("30,30,30").unwrap();
        let mut credit = LaneCredit::default();
        let reserved = credit.reserve(shares, 2);
        assert!(reserved.iter().sum::<usize>() <= 2);
    }
}
