// RedisLimiter (redis_limiter.hpp): one Lua script per admission on Redis's clock, and
// credits moved from the store into a per-lineage pool in Redis. doc/redis-limiter.md
// describes the key layout, the scripts and why no credit is ever granted twice, and
// the events observers (RedisLimiterOptions::connection.observers) hear.
#include "apikeys/redis_limiter.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "admission_checks.hpp"
#include "apikeys/error.hpp"
#include "hex.hpp"
#include "redis_connection.hpp"
#include "system_audit.hpp"
#include "wipe.hpp"

namespace apikeys {
namespace {

// ---------------------------------------------------------------------------------
// Scripts. KEYS[1] is the lineage's hash `<prefix>lim:{<lineage hex>}`; its fields:
//   t:<limit name>   the limit's TAT, Unix microseconds (a Lua number, "%.17g")
//   pool             credits taken from the store and not spent yet
//   pool_end         Unix ms: the pool is stale (counts as 0) once TIME reaches it
//   store_remaining  the store's balance when the pool was last filled
//   exp              Unix ms: when the hash expires (its PEXPIRE), so a script extends
//                    the expiry only when it must, without asking PTTL every time
//   rst              a random value credits_reset() writes: a deposit of credits taken
//                    before the reset (the need-credits answer carried the old value)
//                    is refused, so the old balance's credits never join the new one
//
// GCRA as in src/gcra.hpp, in microseconds as doubles: T = period/limit, tau = burst*T;
// a request of cost c is admitted when max(TAT, now) + c*T - now <= tau, with a
// tolerance of a quarter of T, at most half a microsecond (times near 2^51 us are exact
// to 1/4 us). A cost above the burst is never admitted, and a step c*T under a quarter
// microsecond advances the stored TAT by a quarter (it would round away: the TAT would
// never advance). So a limit never admits more than gcra.hpp would, save for an arrival
// within the tolerance of the boundary; one of more than 4 million a second admits at
// most four requests of cost 1 within one microsecond (not reachable through Redis).
//
// expiry(): nil when the hash already lives past now + ttl, else how long it should
// live from now: ttl (capped at 10 years) plus as much again, at least a minute, so a
// lineage in steady use re-arms its expiry about once per ttl rather than on every
// request. A hash kept past its last state at rest holds nothing a request could use.
//
// The admission body, shared by both scripts. `a` is the index in ARGV of: cost,
// charge (0/1), n, then n times (name, limit, period ms, burst). Returns
//   {1, pool or -1, store_remaining or -1, remaining_1, reset_ms_1, ...}  admitted
//   {0, index (0-based), retry_after_ms}                                  rate limited
//     (a limit whose burst is below the cost, else the refusing limit that makes the
//     request wait longest: retry_after is then when every limit would admit it)
//   {2, pool (0 when stale or missing), rst ('' when none)}                need credits
// and writes nothing unless it admits (all or nothing).
#define APIKEYS_LIMITER_ADMIT                                                   \
  "if redis.replicate_commands then redis.replicate_commands() end\n"           \
  "local function expiry(now_ms, ttl, exp)\n"                                   \
  "  if ttl > 315360000000 then ttl = 315360000000 end\n"                       \
  "  if ttl < 1 then ttl = 1 end\n"                                             \
  "  if exp and exp >= now_ms + ttl then return nil end\n"                      \
  "  return ttl + (ttl < 60000 and 60000 or ttl)\n"                             \
  "end\n"                                                                       \
  "local function admit(a)\n"                                                   \
  "  local t = redis.call('TIME')\n"                                            \
  "  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"                   \
  "  local now_ms = math.floor(now / 1000)\n"                                   \
  "  local cost = tonumber(ARGV[a])\n"                                          \
  "  local charge = ARGV[a + 1] == '1'\n"                                       \
  "  local n = tonumber(ARGV[a + 2])\n"                                         \
  "  local k = KEYS[1]\n"                                                       \
  "  local fields = {'pool', 'pool_end', 'store_remaining', 'exp', 'rst'}\n"    \
  "  for i = 0, n - 1 do fields[6 + i] = 't:' .. ARGV[a + 3 + 4 * i] end\n"     \
  "  local c = redis.call('HMGET', k, unpack(fields))\n"                        \
  "  local new = {}\n"                                                          \
  "  local out = {1, -1, -1}\n"                                                 \
  "  local ttl = 0\n"                                                           \
  "  local worst, wait = nil, 0\n"                                              \
  "  for i = 0, n - 1 do\n"                                                     \
  "    local b = a + 3 + 4 * i\n"                                               \
  "    local T = tonumber(ARGV[b + 2]) * 1000 / tonumber(ARGV[b + 1])\n"        \
  "    local burst = tonumber(ARGV[b + 3])\n"                                   \
  "    local tau = burst * T\n"                                                 \
  "    local eps = T / 4\n"                                                     \
  "    if eps > 0.5 then eps = 0.5 end\n"                                       \
  "    if cost > burst then return {0, i, 1} end\n"                             \
  "    local tat = tonumber(c[6 + i] or '0')\n"                                 \
  "    local base = tat > now and tat or now\n"                                 \
  "    local nt = base + cost * T\n"                                            \
  "    if cost > 0 and nt - now > tau + eps then\n"                             \
  "      local w = math.ceil((nt - now - tau - eps) / 1000)\n"                  \
  "      if not worst or w > wait then worst, wait = i, w end\n"                \
  "    end\n"                                                                   \
  "    if not worst then\n"                                                     \
  "    local ahead = nt - now\n"                                                \
  "    local room = tau - ahead + eps\n"                                        \
  "    out[#out + 1] = room > 0 and math.floor(room / T) or 0\n"                \
  "    local reset = math.ceil((ahead - eps) / 1000)\n"                         \
  "    out[#out + 1] = reset > 0 and reset or 0\n"                              \
  "    new[#new + 1] = fields[6 + i]\n"                                         \
  "    if cost > 0 and nt - base < 0.25 then nt = base + 0.25 end\n"            \
  "    new[#new + 1] = string.format('%.17g', nt)\n"                            \
  "    if reset > ttl then ttl = reset end\n"                                   \
  "    end\n"                                                                   \
  "  end\n"                                                                     \
  "  if worst then return {0, worst, wait} end\n"                               \
  "  local pool = tonumber(c[1])\n"                                             \
  "  local pool_end = tonumber(c[2])\n"                                         \
  "  if pool and (not pool_end or now_ms >= pool_end) then pool = nil end\n"    \
  "  if charge then\n"                                                          \
  "    if not pool or pool < cost then return {2, pool or 0, c[5] or ''} end\n" \
  "    pool = pool - cost\n"                                                    \
  "    out[2] = pool\n"                                                         \
  "    out[3] = tonumber(c[3]) or 0\n"                                          \
  "  end\n"                                                                     \
  "  if cost == 0 then return out end\n"                                        \
  "  if charge then\n"                                                          \
  "    new[#new + 1] = 'pool'\n"                                                \
  "    new[#new + 1] = string.format('%d', pool)\n"                             \
  "  end\n"                                                                     \
  "  if pool and pool_end - now_ms > ttl then ttl = pool_end - now_ms end\n"    \
  "  if #new > 0 then\n"                                                        \
  "    local e = expiry(now_ms, ttl, tonumber(c[4]))\n"                         \
  "    if e then\n"                                                             \
  "      new[#new + 1] = 'exp'\n"                                               \
  "      new[#new + 1] = string.format('%d', now_ms + e)\n"                     \
  "    end\n"                                                                   \
  "    redis.call('HSET', k, unpack(new))\n"                                    \
  "    if e then redis.call('PEXPIRE', k, e) end\n"                             \
  "  end\n"                                                                     \
  "  return out\n"                                                              \
  "end\n"

// ARGV: the admission arguments. One admission.
constexpr const char* kAdmitScript = APIKEYS_LIMITER_ADMIT "return admit(1)\n";

// ARGV: taken, pool_end (ms), store_remaining, rst (as the need-credits answer gave
// it), then the admission arguments. Deposits credits just taken from the store (added
// to a fresh pool of the same period, else replacing it), then runs the admission.
// Returns {3, 0} and writes nothing when Redis's clock is already past pool_end (the
// store's clock is behind it), and {4, 0} when credits_reset() ran since that answer
// (the credits may be the replaced balance's: dropped). A hash without rst is not a
// reset: it expired (or never had one), and a reset would have left one for a minute. The deposit
// is kept whatever the admission answers: credits taken are spent here or lost with the pool, never
// returned.
constexpr const char* kDepositScript = APIKEYS_LIMITER_ADMIT
    "local k = KEYS[1]\n"
    "local rst = redis.call('HGET', k, 'rst')\n"
    "if rst and rst ~= ARGV[4] then return {4, 0} end\n"
    "local t = redis.call('TIME')\n"
    "local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if now_ms >= tonumber(ARGV[2]) then return {3, 0} end\n"
    "local c = redis.call('HMGET', k, 'pool', 'pool_end', 'exp')\n"
    "local pool = tonumber(c[1])\n"
    "if not pool or c[2] ~= ARGV[2] or now_ms >= tonumber(c[2]) then pool = 0 end\n"
    "pool = pool + tonumber(ARGV[1])\n"
    "local e = expiry(now_ms, tonumber(ARGV[2]) - now_ms, tonumber(c[3]))\n"
    "local f = {'pool', string.format('%d', pool), 'pool_end', ARGV[2], 'store_remaining',\n"
    "           ARGV[3]}\n"
    "if e then\n"
    "  f[7] = 'exp'\n"
    "  f[8] = string.format('%d', now_ms + e)\n"
    "end\n"
    "redis.call('HSET', k, unpack(f))\n"
    "if e then redis.call('PEXPIRE', k, e) end\n"
    "return admit(5)\n";

#undef APIKEYS_LIMITER_ADMIT

// ARGV: a fresh rst. credits_reset(): the pool dropped, and deposits of credits taken
// before it refused. The hash lives at least a minute more, so that rst outlasts any
// request in flight (one that read no rst must not find none again).
constexpr const char* kResetScript =
    "local k = KEYS[1]\n"
    "redis.call('HSET', k, 'rst', ARGV[1])\n"
    "redis.call('HDEL', k, 'pool', 'pool_end', 'store_remaining')\n"
    "if redis.call('PTTL', k) < 60000 then redis.call('PEXPIRE', k, 60000) end\n"
    "return 1\n";

enum ScriptId : std::size_t { kAdmit, kDeposit, kReset };

// Rounds of (take from the store, deposit) before giving up as busy: another node
// spending the same pool between the take and the deposit is the only reason for more
// than one.
constexpr int kMaxRounds = 4;

// pool_end in Unix ms for Redis (no refill: far beyond any TIME Redis returns).
std::int64_t pool_end_ms(TimePoint period_end) {
  constexpr std::int64_t kNever = std::int64_t{1} << 52;
  if (period_end == TimePoint::max()) return kNever;
  return std::min(kNever, to_unix_millis(period_end));
}

std::int64_t integer(const redisReply& r) {
  if (r.type != REDIS_REPLY_INTEGER) {
    throw Error(ErrorCode::storage, "RedisLimiter: unexpected reply");
  }
  return r.integer;
}

}  // namespace

struct RedisLimiter::Impl {
  Impl(std::shared_ptr<Store> s, RedisLimiterOptions&& o)
      : store(std::move(s)),
        credit_batch(o.credit_batch),
        pool("RedisLimiter", std::move(o.connection),
             {kAdmitScript, kDepositScript, kResetScript}) {}

  std::shared_ptr<Store> store;
  const std::uint64_t credit_batch;
  detail::RedisPool pool;

  std::string key(const Uuid& lineage) const {
    std::string k = pool.options().prefix + "lim:{";
    const std::size_t at = k.size();
    k.resize(at + 32);
    detail::hex_encode(lineage.bytes().data(), 16, &k[at]);
    k += '}';
    return k;
  }

  // The admission arguments for `r`, with `charge` in place of r.charge_credits.
  static std::vector<std::string> admission_args(const AdmissionRequest& r, bool charge) {
    std::vector<std::string> a;
    a.reserve(3 + 4 * r.limit_count);
    a.push_back(std::to_string(r.cost));
    a.emplace_back(charge ? "1" : "0");
    a.push_back(std::to_string(r.limit_count));
    for (std::size_t i = 0; i < r.limit_count; ++i) {
      const RateLimit& l = r.limits[i];
      a.push_back(l.name);
      a.push_back(std::to_string(l.limit));
      a.push_back(std::to_string(l.period.count()));
      a.push_back(std::to_string(l.effective_burst()));
    }
    return a;
  }

  // Runs a script at most once: a reply lost after the script was sent is a failure,
  // never a second run (an admission or a deposit run twice would spend or add twice).
  // `*sent` (when given): whether the script may have reached Redis (RedisPool::script()).
  detail::RedisReply run(ScriptId id, const std::string& k, const std::vector<std::string>& args,
                         bool* sent = nullptr) {
    if (sent != nullptr) *sent = false;
    pool.check_breaker();
    return pool.script(id, {k}, std::vector<std::string_view>(args.begin(), args.end()),
                       /*at_most_once=*/true, sent);
  }

  // What a need-credits answer says: the pool Redis holds, and the lineage's rst.
  struct Need {
    std::uint64_t pool = 0;
    std::string rst;
  };

  // Decodes a script's answer into `out`; returns what Redis needs when it needs credits.
  static std::optional<Need> decode(const redisReply& r, const AdmissionRequest& req,
                                    Admission& out) {
    if (r.type != REDIS_REPLY_ARRAY || r.elements < 2) {
      throw Error(ErrorCode::storage, "RedisLimiter: unexpected reply");
    }
    const std::int64_t kind = integer(*r.element[0]);
    if (kind == 2) {
      if (r.elements != 3 || r.element[2]->type != REDIS_REPLY_STRING) {
        throw Error(ErrorCode::storage, "RedisLimiter: unexpected reply");
      }
      Need need;
      need.pool = static_cast<std::uint64_t>(std::max<std::int64_t>(0, integer(*r.element[1])));
      need.rst.assign(r.element[2]->str, r.element[2]->len);
      return need;
    }
    if (kind == 0) {
      if (r.elements != 3) throw Error(ErrorCode::storage, "RedisLimiter: unexpected reply");
      out.outcome = AdmissionOutcome::rate_limited;
      out.limited_by = static_cast<std::size_t>(integer(*r.element[1]));
      out.retry_after =
          std::chrono::milliseconds(std::max<std::int64_t>(1, integer(*r.element[2])));
      if (out.limited_by < req.limit_count &&
          req.cost > req.limits[out.limited_by].effective_burst()) {
        out.retry_after = std::chrono::milliseconds::max();  // never admitted
      }
      out.limits.clear();
      out.credits_remaining.reset();
      return std::nullopt;
    }
    if (kind != 1 || r.elements != 3 + 2 * req.limit_count) {
      throw Error(ErrorCode::storage, "RedisLimiter: unexpected reply");
    }
    out.outcome = AdmissionOutcome::admitted;
    const std::int64_t pooled = integer(*r.element[1]);
    const std::int64_t stored = integer(*r.element[2]);
    if (pooled >= 0) {
      out.credits_remaining = std::min<std::uint64_t>(
          KeyPolicyLimits::kMaxCredits * 2,
          static_cast<std::uint64_t>(pooled) +
              static_cast<std::uint64_t>(std::max<std::int64_t>(0, stored)));
    }
    out.limits.resize(req.limit_count);
    for (std::size_t i = 0; i < req.limit_count; ++i) {
      out.limits[i].remaining =
          static_cast<std::uint64_t>(std::max<std::int64_t>(0, integer(*r.element[3 + 2 * i])));
      out.limits[i].reset = std::chrono::milliseconds(integer(*r.element[4 + 2 * i]));
    }
    return std::nullopt;
  }

  // Returns credits Redis never held to the store. A store that fails keeps them (they
  // are lost to the lineage, never granted twice): reported, and the admission fails
  // as busy all the same.
  void give_back(const Uuid& lineage, const CreditTake& take) {
    try {
      store->return_credits_checked(lineage, take.taken, take.period, take.generation);
    } catch (const std::exception& e) {
      if (!pool.observers().empty()) {
        pool.report("return_credits",
                    fmt::format("RedisLimiter: {} credits could not be returned to the store: {}",
                                take.taken, e.what()));
      }
    } catch (...) {
      pool.report("return_credits", "RedisLimiter: credits could not be returned to the store");
    }
  }

  Admission admit(const AdmissionRequest& r) {
    detail::check_admission_limits(r);
    const std::string k = key(r.lineage_id);
    std::vector<std::string> args = admission_args(r, r.charge_credits);
    Admission out;
    std::optional<Need> need = decode(*run(kAdmit, k, args), r, out);
    for (int round = 0; need; ++round) {
      if (round == kMaxRounds) {
        throw Error(ErrorCode::busy, "RedisLimiter: credits spent elsewhere while refilling");
      }
      if (!store) throw Error(ErrorCode::not_supported, "RedisLimiter: no store for credits");
      const std::uint64_t pooled = need->pool;
      const std::uint64_t min = r.cost > pooled ? r.cost - pooled : 0;
      const std::uint64_t max = std::min(min + credit_batch, KeyPolicyLimits::kMaxCredits);
      // Audited when the request carries a ChangeAudit: a refill it writes leaves an event.
      const CreditTake take =
          r.audit != nullptr
              ? store->take_credits_audited(r.lineage_id, min, std::max(min, max), r.now, *r.audit)
              : store->take_credits(r.lineage_id, min, std::max(min, max), r.now);
      detail::mark_committed(r.audit);
      if (take.outcome == CreditTake::Outcome::insufficient) {
        out = Admission{};
        out.outcome = AdmissionOutcome::usage_exceeded;
        out.credits_remaining = take.remaining + pooled;
        return out;
      }
      if (take.outcome == CreditTake::Outcome::no_credits) {
        // Credits were removed since the verdict was read: rate limits only.
        out = Admission{};
        need = decode(*run(kAdmit, k, admission_args(r, false)), r, out);
        continue;
      }
      // From here the credits are out of the store: deposited, or lost if Redis fails.
      std::vector<std::string> deposit{std::to_string(take.taken),
                                       std::to_string(pool_end_ms(take.period_end)),
                                       std::to_string(take.remaining), need->rst};
      deposit.insert(deposit.end(), args.begin(), args.end());
      out = Admission{};
      detail::RedisReply reply;
      bool sent = false;
      try {
        reply = run(kDeposit, k, deposit, &sent);
      } catch (const std::exception& e) {
        if (!sent) {
          // The deposit never left (the breaker open, no connection): the credits go
          // back to the store, which cannot grant them twice.
          if (take.taken > 0) give_back(r.lineage_id, take);
          throw;
        }
        if (take.taken > 0 && !pool.observers().empty()) {
          // Thrown to the caller as it is; the credits it cost are reported here.
          pool.report("deposit",
                      fmt::format("RedisLimiter: {} credits taken from the store may be lost "
                                  "(the deposit in Redis failed): {}",
                                  take.taken, e.what()));
        }
        throw;
      }
      if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
          reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[0]->integer == 3) {
        // Nothing was deposited, so giving them back cannot grant them twice.
        if (take.taken > 0) give_back(r.lineage_id, take);
        throw Error(ErrorCode::busy,
                    "RedisLimiter: Redis's clock is past the store's refill period");
      }
      if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
          reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[0]->integer == 4) {
        // The balance was set since the need-credits answer: these credits may be the
        // replaced balance's. Dropped (neither deposited nor given back); ask again.
        if (take.taken > 0 && !pool.observers().empty()) {
          pool.report("deposit",
                      fmt::format("RedisLimiter: {} credits taken before the balance was set "
                                  "are dropped",
                                  take.taken));
        }
        need = decode(*run(kAdmit, k, args), r, out);
        continue;
      }
      need = decode(*reply, r, out);
    }
    return out;
  }
};

RedisLimiter::RedisLimiter(std::shared_ptr<Store> credits_store, RedisLimiterOptions options) {
  const detail::WipeOnExit wipe_password(options.connection.password);
  const RedisCacheOptions& c = options.connection;
  if (c.host.empty())
    throw Error(ErrorCode::invalid_argument, "RedisLimiter: host must not be empty");
  if (c.port < 1 || c.port > 65535)
    throw Error(ErrorCode::invalid_argument, "RedisLimiter: port must be 1..65535");
  if (c.pool_size == 0)
    throw Error(ErrorCode::invalid_argument, "RedisLimiter: pool_size must be at least 1");
  if (c.prefix.size() > 256)
    throw Error(ErrorCode::invalid_argument, "RedisLimiter: prefix longer than 256 bytes");
  if (options.credit_batch < 1 || options.credit_batch > KeyPolicyLimits::kMaxCredits) {
    throw Error(ErrorCode::invalid_argument, "RedisLimiter: credit_batch must be 1..2^53");
  }
  impl_ = std::make_unique<Impl>(std::move(credits_store), std::move(options));
}

RedisLimiter::~RedisLimiter() = default;

Admission RedisLimiter::admit(const AdmissionRequest& request) { return impl_->admit(request); }

void RedisLimiter::credits_reset(const Uuid& lineage_id) noexcept {
  // Redis unreachable: its pool is what it was; a reset that must hold needs Redis.
  try {
    // Not behind the breaker: a reset must reach a Redis that is up, even within
    // retry_interval of a failure (the old balance's pool would be spent meanwhile).
    const std::string k = impl_->key(lineage_id);
    const std::string rst = Uuid::random().to_string();
    (void)impl_->pool.script(kReset, {k}, {rst});  // twice would do no harm
  } catch (const std::exception& e) {
    impl_->pool.report("credits_reset", e.what());
  } catch (...) {
    impl_->pool.report("credits_reset", "RedisLimiter: credits_reset failed");
  }
}

}  // namespace apikeys
