//! The programs' counters, summed over CPUs.
use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use strait_ebpf_common::{Stat, map};

use crate::{Error, PinLayout};

/// One reading of every counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    values: [u64; Stat::COUNT as usize],
}

impl StatsSnapshot {
    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::ALL.iter().map(|s| (*s, self.get(*s)))
    }

    /// Reads the counters an agent pinned under `pin_dir`, without loading
    /// anything: how tests and tools observe capture from outside the agent.
    pub fn from_pins(pin_dir: &Path) -> Result<Self, Error> {
        let path = PinLayout::new(pin_dir).map(map::STATS);
        let data = MapData::from_pin(&path).map_err(|source| Error::Map {
            path: path.clone(),
            source,
        })?;
        Self::read(&Map::PerCpuArray(data), &path)
    }

    pub(crate) fn read(map: &Map, path: &Path) -> Result<Self, Error> {
        let map_err = |source| Error::Map {
            path: path.into(),
            source,
        };
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err)?;
        let mut snapshot = Self::default();
        for stat in Stat::ALL {
            let per_cpu = array.get(&(stat as u32), 0).map_err(map_err)?;
            snapshot.values[stat as usize] = per_cpu.iter().sum();
        }
        Ok(snapshot)
    }
}
