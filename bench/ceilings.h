// The machine's ceilings, measured on the spot: sustained memory bandwidth over arrays far
// larger than the last-level cache, as a STREAM triad (reads and writes) and as a plain
// read (the traffic of a decode step, which streams weights or a KV cache and writes
// little), and peak f32 FMA rate (a register-resident FMA loop with enough independent
// chains to hide FMA latency).
#pragma once

namespace subq::bench {

struct Ceilings {
  double bandwidth_gbs = 0;  // triad, counting 2 reads + 1 write per element (as STREAM)
  double read_gbs = 0;       // reads only
  double fma_gflops = 0;     // 2 flops per FMA lane
};

// Uses subq::num_threads() threads. Takes about a second.
Ceilings measure_ceilings();

// The read ceiling alone (a fraction of a second), for measuring it again beside a
// bandwidth-bound case: on shared VMs it moved 30-64 GB/s from one process to the next.
double measure_read_gbs();

}  // namespace subq::bench
