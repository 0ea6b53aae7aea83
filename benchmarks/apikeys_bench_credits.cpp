// apikeys_bench_credits: what one credit charge costs on a durable SqliteStore (its own
// write transaction and fsync), directly and through MemoryLimiter with and without a
// lease. No targets: the numbers are for reading (BENCHMARKS.md describes the programs).
//   apikeys_bench_credits [--benchmark_* flags]
// The database lives under $TMPDIR (else /tmp): put that on the disk to measure.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>

#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"
#include "temp_dir.hpp"

namespace {

// A durable store holding one lineage with the largest balance (never exhausted).
struct CreditWorld {
  apikeys_test::TempDir dir;
  std::shared_ptr<apikeys::SqliteStore> store;
  apikeys::Uuid lineage;

  CreditWorld() {
    apikeys::SqliteStoreOptions options;
    options.durable = true;
    store = std::make_shared<apikeys::SqliteStore>(dir.file("credits.db"), options);
    apikeys::KeyRecord r;
    r.info.key_id = *apikeys::Uuid::parse("0b9d6a2e-5f3c-4e1a-9c7b-2d8e4f6a1b3c");
    r.info.account_id = *apikeys::Uuid::parse("7e2f1c4a-3b5d-4a6e-8f9c-0d1e2f3a4b5c");
    r.info.lineage_id = r.info.key_id;
    r.info.public_key = "pk_credits_bench_0000000000000001";
    r.info.title = "bench";
    apikeys::Credits c;
    c.remaining = apikeys::KeyPolicyLimits::kMaxCredits;
    r.info.credits = c;
    store->insert(r);
    lineage = r.info.key_id;
  }
};

CreditWorld& world() {
  static CreditWorld w;
  return w;
}

void take_credits(benchmark::State& st) {
  CreditWorld& w = world();
  const apikeys::TimePoint now = apikeys::system_clock()->now();
  for (auto _ : st) {
    const apikeys::CreditTake t = w.store->take_credits(w.lineage, 1, 1, now);
    if (t.outcome != apikeys::CreditTake::Outcome::taken) st.SkipWithError("not taken");
    benchmark::DoNotOptimize(t);
  }
}

void limiter_admit(benchmark::State& st) {
  CreditWorld& w = world();
  apikeys::MemoryLimiterOptions options;
  options.lease_size = static_cast<std::uint64_t>(st.range(0));
  apikeys::MemoryLimiter limiter(w.store, options);
  apikeys::AdmissionRequest request;
  request.lineage_id = w.lineage;
  request.key_id = w.lineage;
  request.charge_credits = true;
  request.cost = 1;
  request.now = apikeys::system_clock()->now();
  for (auto _ : st) {
    const apikeys::Admission a = limiter.admit(request);
    if (a.outcome != apikeys::AdmissionOutcome::admitted) st.SkipWithError("not admitted");
    benchmark::DoNotOptimize(a);
  }
}

}  // namespace

BENCHMARK(take_credits)->Name("credits/sqlite_durable_take_credits")->Unit(benchmark::kMicrosecond);
BENCHMARK(limiter_admit)
    ->Name("credits/sqlite_durable_admit_lease")
    ->Arg(0)
    ->Arg(100)
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
