// RedisCache: verdicts in Redis (Lua scripts keep the fill-token check atomic with the
// write), a pool of blocking hiredis connections with socket timeouts, a breaker that
// keeps the hot path off a dead server, and an optional MemoryCache tier in front kept
// coherent by a subscriber thread listening on the invalidation channel.
//
// Key layout, scripts, encoding and breaker: doc/redis-cache.md. Its invariants, which
// the code below cites by number:
//  1. A verdict answers only while its value starts with the key's current generation;
//     a missing generation answers nothing.
//  2. put's token check and write, erase's delete/bump/publish and clear's epoch move
//     each run in one script.
//  3. A missing epoch or generation starts from a random value, never from 0.
//  4. A generation key outlives every verdict written under it.
//  5. not_found verdicts never go to Redis.
//  6. The in-process tier answers only while subscribed, is emptied on every
//     (re)subscription and drop, and never outlives the Redis entry it copies.
//  7. A value that does not decode is a miss, never a verdict.
//  8. A lookup without a script names the verdict key with the epoch it reads in the
//     same MGET, and answers only when the two agree.
//  9. No command goes to a server before its run_id is the one recorded under the
//     prefix; a server with another one (restarted from a snapshot or an AOF, or a
//     replica that took over) first moves the epoch.
//
// Observers (RedisCacheOptions::observers) hear the failures handled here: a verdict
// that does not decode, the subscription lost and restored (on the subscriber thread);
// the breaker and reconnect events come from the pool. doc/redis-cache.md, "Observer
// events".
#include "apikeys/redis_cache.hpp"

#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <fmt/format.h>

#include <fcntl.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/memory_cache.hpp"
#include "hex.hpp"
#include "redis_connection.hpp"
#include "thread_annotations.hpp"
#include "wipe.hpp"

namespace apikeys {
namespace {

using SteadyClock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------
// Scripts (doc/redis-cache.md, "Scripts"). ARGV[1] is the prefix, ARGV[2] a random
// epoch used only when the epoch key is missing (invariant 3). Tokens are
// (generation + epoch) mod 2^32, compared as Lua numbers (exact below 2^53).

#define APIKEYS_EPOCH_PROLOGUE        \
  "local ek = ARGV[1] .. 'e'\n"       \
  "local e = redis.call('GET', ek)\n" \
  "if not e then e = ARGV[2]; redis.call('SET', ek, e) end\n"

// Moves the epoch by the step in ARGV slot `step` (1..2^31, so every token changes mod
// 2^32) within 2^48 (exact as a Lua number), written as integer text (some Redis
// versions write a Lua number such as 1.23e+14 otherwise; '%d' would go through a C
// long, 32 bits on some builds).
#define APIKEYS_EPOCH_MOVE(step)                                  \
  "local n = string.format('%.0f', (tonumber(e) + tonumber(" step \
  ")) % 281474976710656)\n"                                       \
  "redis.call('SET', ek, n)\n"

// Invariant 1. ARGV: prefix, epoch0, pk, field. Hit: {1, value, pttl, epoch}. Miss:
// {0, token, epoch}. The epoch (as stored) lets the client name verdict keys itself
// (invariant 8).
constexpr const char* kGetScript = APIKEYS_EPOCH_PROLOGUE
    "local vk = ARGV[1] .. 'v:' .. e .. ':' .. ARGV[3] .. ':' .. ARGV[4]\n"
    "local g = redis.call('GET', ARGV[1] .. 'g:' .. ARGV[3])\n"
    "local v = redis.call('GET', vk)\n"
    "if v then\n"
    "  local p = (g or '') .. ':'\n"
    "  if g and string.sub(v, 1, #p) == p then return {1, string.sub(v, #p + 1), redis.call('PTTL', vk), e} end\n"
    "  redis.call('DEL', vk)\n"
    "  redis.call('SREM', ARGV[1] .. 'i:' .. e .. ':' .. ARGV[3], ARGV[4])\n"
    "end\n"
    "return {0, (tonumber(g or '0') + tonumber(e)) % 4294967296, e}\n";

// ARGV: prefix, epoch0, pk. Returns the token.
constexpr const char* kTokenScript = APIKEYS_EPOCH_PROLOGUE
    "local g = redis.call('GET', ARGV[1] .. 'g:' .. ARGV[3]) or '0'\n"
    "return (tonumber(g) + tonumber(e)) % 4294967296\n";

// Invariants 2, 3, 4. ARGV: prefix, epoch0, pk, field, token, value, ttl_ms, is_valid,
// max_per_key, generation0, generation_ttl_ms. Returns 1 stored, 0 token stale, 2
// refused (too many verdicts for the key).
constexpr const char* kPutScript = APIKEYS_EPOCH_PROLOGUE
    "local gk = ARGV[1] .. 'g:' .. ARGV[3]\n"
    "local g = redis.call('GET', gk)\n"
    "if (tonumber(g or '0') + tonumber(e)) % 4294967296 ~= tonumber(ARGV[5]) then return 0 end\n"
    "local ik = ARGV[1] .. 'i:' .. e .. ':' .. ARGV[3]\n"
    "local vk = ARGV[1] .. 'v:' .. e .. ':' .. ARGV[3] .. ':' .. ARGV[4]\n"
    "if ARGV[8] == '0' and redis.call('SISMEMBER', ik, ARGV[4]) == 0 and\n"
    "   redis.call('SCARD', ik) >= tonumber(ARGV[9]) then return 2 end\n"
    "if not g then g = ARGV[10]; redis.call('SET', gk, g) end\n"
    "local keep = ARGV[11]\n"
    "if tonumber(ARGV[7]) > tonumber(keep) then keep = ARGV[7] end\n"
    "if redis.call('PTTL', gk) < tonumber(keep) then redis.call('PEXPIRE', gk, keep) end\n"
    "redis.call('SET', vk, g .. ':' .. ARGV[6], 'PX', ARGV[7])\n"
    "redis.call('SADD', ik, ARGV[4])\n"
    "if redis.call('PTTL', ik) < tonumber(ARGV[7]) then redis.call('PEXPIRE', ik, ARGV[7]) end\n"
    "return 1\n";

// Invariants 1, 2, 3: the bump alone hides older verdicts; the index only lets them go
// now rather than at expiry. ARGV: prefix, epoch0, pk, generation_ttl_ms, channel,
// message, generation0. Returns the number of verdicts deleted.
constexpr const char* kEraseScript = APIKEYS_EPOCH_PROLOGUE
    "local ik = ARGV[1] .. 'i:' .. e .. ':' .. ARGV[3]\n"
    "local base = ARGV[1] .. 'v:' .. e .. ':' .. ARGV[3] .. ':'\n"
    "local m = redis.call('SMEMBERS', ik)\n"
    "for i = 1, #m do redis.call('DEL', base .. m[i]) end\n"
    "redis.call('DEL', ik)\n"
    "local gk = ARGV[1] .. 'g:' .. ARGV[3]\n"
    "if not redis.call('GET', gk) then redis.call('SET', gk, ARGV[7]) end\n"
    "redis.call('INCR', gk)\n"
    "redis.call('PEXPIRE', gk, ARGV[4])\n"
    "redis.call('PUBLISH', ARGV[5], ARGV[6])\n"
    "return #m\n";

// ARGV: prefix, epoch0, step, channel, message. Moves the epoch by `step`
// (APIKEYS_EPOCH_MOVE) and publishes. Returns the new epoch.
constexpr const char* kClearScript = APIKEYS_EPOCH_PROLOGUE
    APIKEYS_EPOCH_MOVE("ARGV[3]")
    "redis.call('PUBLISH', ARGV[4], ARGV[5])\n"
    "return n\n";

// Invariant 9. ARGV: prefix, epoch0, run_id, step, channel, message, force. A server
// whose run_id is not the one recorded under the prefix restarted, or took over from
// another: its data may be older than an erase already made (a snapshot, a lagging
// replica), so the epoch moves as in clear, hiding every verdict it holds, before it
// is used. `force` ('1'): the instance last settled on another server, so this one's
// data may predate erases made there (an old primary back before it resynced), even
// though its own run_id is the one recorded. It publishes the clear unless no server
// was recorded (in-process tiers copied nothing from a prefix's first server). Returns
// 1 when it moved the epoch, 0 when the server was the one recorded.
constexpr const char* kServerScript = APIKEYS_EPOCH_PROLOGUE
    "local rk = ARGV[1] .. 'r'\n"
    "local r = redis.call('GET', rk)\n"
    "if r == ARGV[3] and ARGV[7] ~= '1' then return 0 end\n"
    APIKEYS_EPOCH_MOVE("ARGV[4]")
    "redis.call('SET', rk, ARGV[3])\n"
    "if r or ARGV[7] == '1' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end\n"
    "return 1\n";

#undef APIKEYS_EPOCH_MOVE
#undef APIKEYS_EPOCH_PROLOGUE

enum ScriptId { kGet, kToken, kPut, kErase, kClear, kScriptCount };
constexpr const char* kScripts[kScriptCount] = {kGetScript, kTokenScript, kPutScript, kEraseScript,
                                                kClearScript};

using Reply = detail::RedisReply;
using Context = detail::RedisContext;
using Unreachable = detail::RedisUnreachable;

std::uint64_t random_u64() {
  std::uint64_t v = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof v) != 1) {
    throw Error(ErrorCode::crypto, "RedisCache: the CSPRNG failed");
  }
  return v;
}

// "<64 hex digits of the digest><8 hex digits of the pepper id>".
std::string digest_field(const Digest& d) {
  std::string out(72, '0');
  detail::hex_encode(d.bytes.data(), d.bytes.size(), out.data());
  for (std::size_t i = 0; i < 4; ++i) {
    const auto byte = static_cast<std::uint8_t>(d.pepper_id >> (24 - 8 * i));
    detail::hex_encode(&byte, 1, out.data() + 64 + 2 * i);
  }
  return out;
}

// Verdict value, layout version 4 (52 bytes plus the variable parts): version, code,
// flags, account id (16), key id (16), the key's expiry in Unix milliseconds (8,
// big-endian; INT64_MIN: none), the scopes joined by single spaces and the metadata,
// each after its length (4, big-endian), the lineage (16) when flag 3 says so, then the
// rate limits: their count (1), and per limit the name after its length (1), limit,
// period in milliseconds and burst (8 each, big-endian). Flags: bit 0 has_policy, bit 1
// has_admission, bit 2 has_credits, bit 3 a lineage follows (only when it is not the
// key id: a verdict with has_admission and no lineage is the key's own); the others 0.
// doc/redis-cache.md, "Verdict encoding". Invariant 7: another version (layout 3 had no
// rate limits, so reading it could admit a request past them), a length that does not
// add up, a flag this layout does not define, or a code past kLastValidationCode (one a
// newer library added), decodes as a miss.
constexpr std::uint8_t kVerdictLayout = 4;
constexpr std::size_t kVerdictFixedSize = 52;
constexpr std::size_t kLimitFixedSize = 1 + 24;
constexpr std::uint8_t kFlagHasPolicy = 0x01;
constexpr std::uint8_t kFlagHasAdmission = 0x02;
constexpr std::uint8_t kFlagHasCredits = 0x04;
constexpr std::uint8_t kFlagLineage = 0x08;
constexpr std::uint8_t kKnownFlags =
    kFlagHasPolicy | kFlagHasAdmission | kFlagHasCredits | kFlagLineage;
constexpr std::int64_t kNoExpiry = std::numeric_limits<std::int64_t>::min();

void put_be(std::string& out, std::size_t at, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i)
    out[at + static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * (bytes - 1 - i)));
}

void append_be(std::string& out, std::uint64_t v, int bytes) {
  out.resize(out.size() + static_cast<std::size_t>(bytes));
  put_be(out, out.size() - static_cast<std::size_t>(bytes), v, bytes);
}

std::uint64_t get_be(const char* at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<std::uint8_t>(at[i]);
  return v;
}

// The scopes in their stored form (KeyInfo::scopes as the stores keep them), or nullopt
// when a scope cannot be told apart in it (empty, or holding a space: never one the
// Validator puts, whose scopes follow the scope grammar).
std::optional<std::string> joined_scopes(const std::vector<std::string>& scopes) {
  std::string out;
  for (const std::string& s : scopes) {
    if (s.empty() || s.find(' ') != std::string::npos) return std::nullopt;
    if (&s != &scopes.front()) out += ' ';
    out += s;
  }
  return out;
}

// True when the verdict's lineage is written out: set and not the key's own id.
bool writes_lineage(const Verdict& v) noexcept {
  return !v.lineage_id.is_nil() && v.lineage_id != v.key_id;
}

// The value to store, or nullopt when the verdict cannot be encoded (see joined_scopes,
// a part over 4 GiB, more than 255 rate limits or a name of 0 or over 255 bytes: none
// the Validator puts): the put then stores nothing, which is always safe.
std::optional<std::string> encode(const Verdict& v) {
  const std::optional<std::string> scopes = joined_scopes(v.scopes);
  constexpr std::size_t kMaxPart = std::numeric_limits<std::uint32_t>::max();
  if (!scopes || scopes->size() > kMaxPart || v.metadata.size() > kMaxPart ||
      v.rate_limits.size() > 255) {
    return std::nullopt;
  }
  const bool lineage = writes_lineage(v);
  std::size_t limits_size = 0;
  for (const RateLimit& l : v.rate_limits) {
    if (l.name.empty() || l.name.size() > 255) return std::nullopt;
    limits_size += kLimitFixedSize + l.name.size();
  }
  std::string out(47, '\0');
  out.reserve(kVerdictFixedSize + scopes->size() + v.metadata.size() + (lineage ? 16 : 0) +
              limits_size);
  out[0] = static_cast<char>(kVerdictLayout);
  out[1] = static_cast<char>(v.code);
  out[2] = static_cast<char>((v.has_policy ? kFlagHasPolicy : 0) |
                             (v.has_admission ? kFlagHasAdmission : 0) |
                             (v.has_credits ? kFlagHasCredits : 0) | (lineage ? kFlagLineage : 0));
  std::memcpy(&out[3], v.account_id.bytes().data(), 16);
  std::memcpy(&out[19], v.key_id.bytes().data(), 16);
  put_be(out, 35,
         static_cast<std::uint64_t>(v.expires_at ? to_unix_millis(*v.expires_at) : kNoExpiry), 8);
  put_be(out, 43, scopes->size(), 4);
  out += *scopes;
  append_be(out, v.metadata.size(), 4);
  out += v.metadata;
  if (lineage) {
    out.append(reinterpret_cast<const char*>(v.lineage_id.bytes().data()), 16);
  }
  append_be(out, v.rate_limits.size(), 1);
  for (const RateLimit& l : v.rate_limits) {
    append_be(out, l.name.size(), 1);
    out += l.name;
    append_be(out, l.limit, 8);
    append_be(out, static_cast<std::uint64_t>(static_cast<std::int64_t>(l.period.count())), 8);
    append_be(out, l.burst, 8);
  }
  return out;
}

std::optional<Verdict> decode(const char* data, std::size_t len) {
  // Not ours, another layout or a newer code or flag: a miss is always safe.
  if (len < kVerdictFixedSize || static_cast<std::uint8_t>(data[0]) != kVerdictLayout ||
      !is_known_validation_code(static_cast<std::uint8_t>(data[1])) ||
      (static_cast<std::uint8_t>(data[2]) & ~kKnownFlags) != 0) {
    return std::nullopt;
  }
  const auto flags = static_cast<std::uint8_t>(data[2]);
  // `left`: bytes not yet accounted for, beyond the fixed part.
  std::size_t left = len - kVerdictFixedSize;
  const std::uint64_t scopes_len = get_be(data + 43, 4);
  if (scopes_len > left) return std::nullopt;
  left -= static_cast<std::size_t>(scopes_len);
  const char* at = data + 47 + scopes_len;
  const std::uint64_t metadata_len = get_be(at, 4);
  if (metadata_len > left) return std::nullopt;
  left -= static_cast<std::size_t>(metadata_len);
  const char* const metadata = at + 4;
  at = metadata + metadata_len;
  const bool lineage = (flags & kFlagLineage) != 0;
  if (lineage && left < 16) return std::nullopt;
  const char* const lineage_at = at;
  if (lineage) {
    left -= 16;
    at += 16;
  }
  const std::size_t limit_count = static_cast<std::uint8_t>(*at++);
  const char* const limits_at = at;
  for (std::size_t i = 0; i < limit_count; ++i) {
    if (left < kLimitFixedSize) return std::nullopt;
    const std::size_t name = static_cast<std::uint8_t>(*at);
    if (name == 0 || name > left - kLimitFixedSize) return std::nullopt;
    left -= kLimitFixedSize + name;
    at += kLimitFixedSize + name;
  }
  if (left != 0) return std::nullopt;

  const std::string_view scopes(data + 47, static_cast<std::size_t>(scopes_len));
  Verdict v;
  // Split on single spaces; an empty scope (two spaces, one at either end) is not a
  // stored form this encoder writes.
  for (std::size_t pos = 0; pos < scopes.size();) {
    const std::size_t space = std::min(scopes.find(' ', pos), scopes.size());
    if (space == pos || space + 1 == scopes.size()) return std::nullopt;
    v.scopes.emplace_back(scopes.substr(pos, space - pos));
    pos = space + 1;
  }
  v.code = static_cast<ValidationCode>(static_cast<std::uint8_t>(data[1]));
  v.has_policy = (flags & kFlagHasPolicy) != 0;
  v.has_admission = (flags & kFlagHasAdmission) != 0;
  v.has_credits = (flags & kFlagHasCredits) != 0;
  std::array<std::uint8_t, 16> id{};
  std::memcpy(id.data(), data + 3, 16);
  v.account_id = Uuid(id);
  std::memcpy(id.data(), data + 19, 16);
  v.key_id = Uuid(id);
  const auto expires = static_cast<std::int64_t>(get_be(data + 35, 8));
  if (expires != kNoExpiry) v.expires_at = from_unix_millis(expires);
  v.metadata.assign(metadata, static_cast<std::size_t>(metadata_len));
  if (lineage) {
    std::memcpy(id.data(), lineage_at, 16);
    v.lineage_id = Uuid(id);
  } else if (v.has_admission && v.code == ValidationCode::valid) {
    v.lineage_id = v.key_id;  // not written: the key's own
  }
  v.rate_limits.resize(limit_count);
  at = limits_at;
  for (RateLimit& l : v.rate_limits) {
    const std::size_t name = static_cast<std::uint8_t>(*at);
    l.name.assign(at + 1, name);
    at += 1 + name;
    l.limit = get_be(at, 8);
    l.period = std::chrono::milliseconds(static_cast<std::int64_t>(get_be(at + 8, 8)));
    l.burst = get_be(at + 16, 8);
    at += 24;
  }
  if (!v.rate_limits.empty()) {
    // Limits a key could never have (out of range, unordered, duplicated: bytes damaged
    // or written by something else) are a miss: the store is read, never a limiter fed
    // values it must refuse.
    try {
      if (normalize_rate_limits(v.rate_limits) != v.rate_limits) return std::nullopt;
    } catch (...) {
      return std::nullopt;
    }
  }
  return v;
}

// A number as the scripts store the epoch and the generations: decimal digits without
// a sign or a leading zero (a lone "0" aside), below `bound` (at most 2^53). nullopt for
// a missing key or any other text: the get script then reads it (invariant 8).
std::optional<std::uint64_t> stored_number(const redisReply& r, std::uint64_t bound) noexcept {
  if (r.type != REDIS_REPLY_STRING || r.len == 0 || r.len > 16) return std::nullopt;
  if (r.str[0] == '0' && r.len != 1) return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < r.len; ++i) {
    const char c = r.str[i];
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');  // 16 digits stay below 2^64
  }
  if (v >= bound) return std::nullopt;
  return v;
}

constexpr std::uint64_t kEpochBound = std::uint64_t{1} << 48;
constexpr std::uint64_t kGenerationBound = std::uint64_t{1} << 53;

// The Redis half of the last miss on this thread, so the fill_token() that the
// Validator calls right after a miss costs no round trip. An older token is always
// safe to use (it can only be invalidated by more, not fewer, erases).
struct TokenMemo {
  std::uint64_t owner = 0;  // RedisCache instance serial; 0: empty
  std::string public_key;
  std::uint32_t token = 0;
};
thread_local TokenMemo t_memo;
std::atomic<std::uint64_t> g_next_serial{1};

}  // namespace

struct RedisCache::Impl {
  // The password moves into the pool (options.password is left empty); the caller
  // wipes what the moves leave in `o`.
  explicit Impl(RedisCacheOptions&& o)
      : pool("RedisCache", std::move(o),
             std::vector<const char*>(std::begin(kScripts), std::end(kScripts))),
        options(pool.options()),
        channel(options.prefix + "invalidate"),
        epoch_key(options.prefix + "e"),
        serial(g_next_serial.fetch_add(1)) {
    pool.set_server_hook([this](redisContext& c) { settle_server(c); });
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  detail::RedisPool pool;  // command connections, AUTH, breaker, scripts
  const RedisCacheOptions& options;
  const std::string channel;
  const std::string epoch_key;  // {P}e, which lookup() reads
  const std::uint64_t serial;
  std::unique_ptr<MemoryCache> local;  // null when local_tier is off

  // Subscriber.
  std::atomic<bool> live{false};
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> received{0};
  int wake_pipe[2] = {-1, -1};
  std::thread subscriber;
  // Set when "subscription_lost" was reported, cleared by "subscription_restored", so
  // an outage is one of each however many reconnects fail. Subscriber thread only.
  bool reported_lost = false;

  // The epoch as a lookup last read it (kNoEpoch: none yet). lookup() names the verdict
  // key with it and checks it in the same MGET (invariant 8).
  static constexpr std::uint64_t kNoEpoch = ~std::uint64_t{0};
  std::atomic<std::uint64_t> epoch_seen{kNoEpoch};
  // Set when Redis refused the MGET (an ACL that allows the scripts only): lookups
  // run the get script from then on.
  std::atomic<bool> mget_refused{false};
  // Set once INFO gave no run_id (invariant 9); the subscriber thread then tells the
  // observers (unchecked_to_report), outside any pool connection's lease.
  std::atomic<bool> server_unchecked{false};
  std::atomic<bool> unchecked_to_report{false};
  // The run_id of the server this instance last settled on (invariant 9).
  detail::Mutex settled_mu;
  std::string settled_run_id APIKEYS_GUARDED_BY(settled_mu);

  void check_breaker() const { pool.check_breaker(); }
  bool local_live() const noexcept { return local && live.load(std::memory_order_acquire); }

  // Remembers the Redis half of a miss's fill token for this thread (TokenMemo).
  void remember_token(std::string_view pk, std::uint64_t token) const {
    t_memo.owner = serial;
    t_memo.public_key.assign(pk);
    t_memo.token = static_cast<std::uint32_t>(token);
  }

  // Notes the epoch a get script returned, when it is in the form the scripts write.
  void note_epoch(const redisReply& e) noexcept {
    if (const auto epoch = stored_number(e, kEpochBound)) {
      epoch_seen.store(*epoch, std::memory_order_relaxed);
    }
  }

  // A get without a script (invariant 8): one MGET of the epoch, the key's generation
  // and the verdict named under the epoch last seen, answering only when the epoch it
  // read is the one in that name. True when it answered: `out` holds the verdict (a
  // hit) or nothing (a miss, whose token is remembered for fill_token()). False when the
  // get script must decide: no epoch seen yet or none in Redis (the script creates it),
  // the epoch moved on both tries, a verdict of another generation there (the script
  // deletes it), or a number in a form the scripts never write.
  bool lookup(std::string_view pk, std::string_view field, std::optional<Verdict>& out) {
    std::string generation_key;
    generation_key.reserve(options.prefix.size() + 2 + pk.size());
    generation_key.append(options.prefix).append("g:").append(pk);
    for (int attempt = 0; attempt < 2; ++attempt) {
      const std::uint64_t seen = epoch_seen.load(std::memory_order_relaxed);
      if (seen == kNoEpoch || mget_refused.load(std::memory_order_relaxed)) return false;
      const std::string epoch_text = std::to_string(seen);
      std::string verdict_key;
      verdict_key.reserve(options.prefix.size() + 4 + epoch_text.size() + pk.size() + field.size());
      verdict_key.append(options.prefix).append("v:").append(epoch_text).append(":");
      verdict_key.append(pk).append(":").append(field);
      Reply r;
      try {
        r = pool.run({"MGET", epoch_key, generation_key, verdict_key});
      } catch (const Error& e) {
        // Refused for good (an ACL without MGET, or a server that renamed it); any other
        // failure (a restart's LOADING, a busy script, unreachable) is one lookup's.
        const std::string_view what = e.what();
        if (e.code() != ErrorCode::storage ||
            (what.find("NOPERM") == std::string_view::npos &&
             what.find("unknown command") == std::string_view::npos)) {
          throw;
        }
        if (!mget_refused.exchange(true, std::memory_order_relaxed)) {
          pool.report("mget_refused",
                      "RedisCache get: Redis refused MGET (an ACL?); lookups run the get "
                      "script from now on");
        }
        return false;
      }
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
        throw Error(ErrorCode::storage, "RedisCache get: unexpected reply");
      }
      const redisReply& e = *r->element[0];
      const redisReply& g = *r->element[1];
      const redisReply& v = *r->element[2];
      const std::optional<std::uint64_t> epoch = stored_number(e, kEpochBound);
      if (!epoch) return false;
      if (*epoch != seen) {
        // A clear moved it (here or on another node): name the key again.
        epoch_seen.store(*epoch, std::memory_order_relaxed);
        continue;
      }
      std::uint64_t generation = 0;  // a missing generation counts as 0 in a token
      if (g.type != REDIS_REPLY_NIL) {
        const std::optional<std::uint64_t> parsed = stored_number(g, kGenerationBound);
        if (!parsed) return false;
        generation = *parsed;
      }
      // The scripts add the two as Lua numbers: exact below 2^53 only.
      if (generation + *epoch >= kGenerationBound) return false;
      const std::uint64_t token = (generation + *epoch) % (std::uint64_t{1} << 32);
      if (v.type == REDIS_REPLY_NIL) {
        out.reset();
        remember_token(pk, token);
        return true;
      }
      if (v.type != REDIS_REPLY_STRING) {
        throw Error(ErrorCode::storage, "RedisCache get: unexpected reply");
      }
      // Invariant 1: the value starts with the key's current generation and ':'.
      if (g.type == REDIS_REPLY_NIL || v.len < g.len + 1 || std::memcmp(v.str, g.str, g.len) != 0 ||
          v.str[g.len] != ':') {
        return false;
      }
      out = decode(v.str + g.len + 1, v.len - g.len - 1);
      if (!out) {
        pool.report("decode",
                    "RedisCache get: a stored verdict does not decode (another layout "
                    "version, or damaged); taken as a miss");
        remember_token(pk, token);
      }
      return true;
    }
    return false;
  }

  // Invariant 9, on a new command connection (or one whose server forgot the scripts):
  // the server's run_id against the one recorded under the prefix, the epoch moved if
  // they differ. A server whose INFO gives no run_id (an ACL without INFO, a proxy) is
  // told once to the observers (`server_unchecked`) and used unchecked.
  void settle_server(redisContext& c) {
    std::string run_id;
    {
      Reply info = pool.command(c, {"INFO", "server"});
      if (info->type == REDIS_REPLY_STRING) {
        run_id = run_id_in(std::string_view(info->str, info->len));
      }
    }
    if (run_id.empty()) {
      if (!server_unchecked.exchange(true, std::memory_order_relaxed)) {
        unchecked_to_report.store(true, std::memory_order_release);
      }
      return;
    }
    // The last server settled on, read before the script and written after it only if
    // no other connection settled meanwhile: one that settled on another server makes
    // this one run again, forced, since its data may predate what that one saw.
    std::string seen;
    {
      detail::MutexLock lock(settled_mu);
      seen = settled_run_id;
    }
    Reply r;
    for (int round = 0;; ++round) {
      const bool force = !seen.empty() && seen != run_id;
      r = pool.command(c, {"EVAL", kServerScript, "0", options.prefix, random_start(), run_id,
                           random_step(), channel, "C", force ? "1" : "0"});
      if (r->type != REDIS_REPLY_INTEGER) {
        throw Error(ErrorCode::storage,
                    "RedisCache: the server check failed: " + detail::RedisPool::reply_text(*r));
      }
      detail::MutexLock lock(settled_mu);
      if (settled_run_id == seen || settled_run_id == run_id) {
        settled_run_id = run_id;
        break;
      }
      if (round == 2) {
        // Servers behind one address that keep changing: this connection goes.
        throw Error(ErrorCode::storage, "RedisCache: the server changed while it was checked");
      }
      seen = settled_run_id;
    }
    // Our lookups name verdict keys with the epoch they last saw: read it again. (They
    // also check it in the same MGET; this only saves that lookup a second try.)
    if (r->integer == 1) epoch_seen.store(kNoEpoch, std::memory_order_relaxed);
  }
  // The run_id line's value in INFO's text (40 hex digits), or empty.
  static std::string run_id_in(std::string_view info) {
    constexpr std::string_view kField = "run_id:";
    std::size_t at = info.find(kField);
    while (at != std::string_view::npos && at != 0 && info[at - 1] != '\n') {
      at = info.find(kField, at + 1);
    }
    if (at == std::string_view::npos) return {};
    const std::string_view rest = info.substr(at + kField.size());
    const std::size_t end = std::min(rest.find_first_of("\r\n"), rest.size());
    const std::string_view id = rest.substr(0, end);
    if (id.empty() || id.size() > 64 ||
        !std::all_of(id.begin(), id.end(), [](char ch) { return detail::hex_value(ch) >= 0; })) {
      return {};
    }
    return std::string(id);
  }

  // Runs a script (invariant 2) with the prefix and a random epoch0 first.
  Reply script(ScriptId id, std::vector<std::string> args) {
    args.insert(args.begin(), {options.prefix, random_start()});
    return pool.script(id, {}, std::vector<std::string_view>(args.begin(), args.end()));
  }

  std::string message_erase(std::string_view pk) const { return "E" + std::string(pk); }
  std::string generation_ttl_ms() const {
    return std::to_string(std::max<std::int64_t>(1, options.generation_ttl.count()));
  }
  // A random start for a missing epoch or generation key (invariant 3), below 2^47 so
  // that both, and the generation's increments, stay exact as Lua numbers.
  static std::string random_start() {
    return std::to_string(random_u64() % (std::uint64_t{1} << 47));
  }
  // A random step for moving the epoch (APIKEYS_EPOCH_MOVE), in 1..2^31.
  static std::string random_step() {
    return std::to_string(1 + random_u64() % (std::uint64_t{1} << 31));
  }

  // ---- subscriber -----------------------------------------------------------------

  void apply(const redisReply& r) {
    // ["message", channel, payload] or ["pong", ""] / ["subscribe", channel, n].
    if (r.type != REDIS_REPLY_ARRAY || r.elements < 1 || r.element[0]->type != REDIS_REPLY_STRING)
      return;
    const std::string_view kind(r.element[0]->str, r.element[0]->len);
    if (kind == "subscribe") {
      // Invariant 6: messages published while we were not listening are lost.
      if (local) local->clear();
      live.store(true, std::memory_order_release);
      if (reported_lost) {
        reported_lost = false;
        pool.report("subscription_restored", {}, true);
      }
      return;
    }
    if (kind != "message" || r.elements != 3 || r.element[2]->type != REDIS_REPLY_STRING) return;
    const std::string_view payload(r.element[2]->str, r.element[2]->len);
    if (payload.empty()) return;
    if (local) {
      if (payload[0] == 'E') {
        local->erase(std::string_view(r.element[2]->str + 1, r.element[2]->len - 1));
      } else {
        local->clear();  // 'C', or anything we do not understand: the safe choice
      }
    }
    received.fetch_add(1, std::memory_order_relaxed);
  }

  void go_dark() {
    // Order matters: stop using the tier, then empty it (a fill that saw it live
    // either took its token before this clear, and is refused, or finds it dark).
    live.store(false, std::memory_order_release);
    if (local) local->clear();
  }

  // Waits up to `d` unless stopping; returns false when stopping.
  bool nap(std::chrono::milliseconds d) {
    pollfd p{};
    p.fd = wake_pipe[0];
    p.events = POLLIN;
    (void)::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(1, d.count())));
    return !stopping.load();
  }

  // The subscription failed (or could not be made): the tier is dark; tell the
  // observers once per outage, unless the cache is going away.
  void lost(const char* message) {
    go_dark();
    if (reported_lost || stopping.load()) return;
    reported_lost = true;
    pool.report("subscription_lost", message);
  }

  // What settle_server() left for the observers (invariant 9); subscriber thread.
  void report_deferred() {
    if (unchecked_to_report.exchange(false, std::memory_order_acquire)) {
      pool.report("server_unchecked",
                  "RedisCache: the server's INFO gives no run_id (an ACL without INFO, or a "
                  "proxy?): a restart from a snapshot cannot be told, and verdicts erased "
                  "since the snapshot would answer again");
    }
  }

  void run_subscriber() {
    while (!stopping.load()) {
      report_deferred();
      try {
        subscribe_once();
      } catch (const std::exception& e) {
        lost(e.what());
      } catch (...) {
        lost("RedisCache subscriber: unexpected exception");
      }
      go_dark();
      if (!nap(std::min(options.retry_interval, std::chrono::milliseconds(1000)))) break;
    }
    go_dark();
  }

  void send(redisContext& c, const std::vector<std::string_view>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (auto a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    if (redisAppendCommandArgv(&c, static_cast<int>(argv.size()), argv.data(), lens.data()) !=
        REDIS_OK) {
      throw Unreachable("RedisCache subscriber: append failed");
    }
    int done = 0;
    while (!done) {
      if (redisBufferWrite(&c, &done) != REDIS_OK)
        throw Unreachable("RedisCache subscriber: write failed");
    }
  }

  // Returns (normally) only when stopping; throws when the connection fails.
  void subscribe_once() {
    Context c = pool.connect(false);
    send(*c, {"SUBSCRIBE", channel});
    const auto beat = std::max<std::chrono::milliseconds>(options.heartbeat_interval,
                                                          std::chrono::milliseconds(10));
    auto last_data = SteadyClock::now();
    auto last_ping = last_data;
    while (!stopping.load()) {
      // Replies already read and parsed.
      for (;;) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(c.get(), &raw) != REDIS_OK)
          throw Unreachable("RedisCache subscriber: protocol error");
        if (raw == nullptr) break;
        Reply r(static_cast<redisReply*>(raw));
        apply(*r);
      }
      pollfd p[2]{};
      p[0].fd = c->fd;
      p[0].events = POLLIN;
      p[1].fd = wake_pipe[0];
      p[1].events = POLLIN;
      const int n = ::poll(p, 2, static_cast<int>(beat.count()));
      if (n < 0 && errno != EINTR) throw Unreachable("RedisCache subscriber: poll failed");
      if (stopping.load()) return;
      report_deferred();
      const auto now = SteadyClock::now();
      if (n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        if (redisBufferRead(c.get()) != REDIS_OK)
          throw Unreachable("RedisCache subscriber: connection lost");
        last_data = now;
        continue;
      }
      if (now - last_data >= 2 * beat) throw Unreachable("RedisCache subscriber: no heartbeat");
      if (now - last_ping >= beat) {
        send(*c, {"PING"});
        last_ping = now;
      }
    }
  }
};

RedisCache::RedisCache(RedisCacheOptions options) {
  // `options` is our copy: wipe its password on every way out (after the move below
  // it is empty, but a short password's bytes stay in its inline buffer).
  const detail::WipeOnExit wipe_password(options.password);
  if (options.host.empty())
    throw Error(ErrorCode::invalid_argument, "RedisCache: host must not be empty");
  if (options.port < 1 || options.port > 65535)
    throw Error(ErrorCode::invalid_argument, "RedisCache: port must be 1..65535");
  if (options.pool_size == 0)
    throw Error(ErrorCode::invalid_argument, "RedisCache: pool_size must be at least 1");
  if (options.prefix.size() > 256)
    throw Error(ErrorCode::invalid_argument, "RedisCache: prefix longer than 256 bytes");
  impl_ = std::make_unique<Impl>(std::move(options));
  Impl& impl = *impl_;
  if (impl.options.local_tier) {
    MemoryCacheOptions m;
    m.capacity = std::max<std::size_t>(1, impl.options.local_capacity);
    m.shards = 16;
    impl.local = std::make_unique<MemoryCache>(m);
  }
  if (::pipe2(impl.wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw Error(ErrorCode::storage, "RedisCache: cannot create the wake-up pipe");
  }
  try {
    impl.subscriber = std::thread([&impl] { impl.run_subscriber(); });
  } catch (...) {
    ::close(impl.wake_pipe[0]);
    ::close(impl.wake_pipe[1]);
    throw;
  }
}

RedisCache::~RedisCache() {
  impl_->stopping.store(true);
  const char byte = 1;
  (void)!::write(impl_->wake_pipe[1], &byte, 1);
  if (impl_->subscriber.joinable()) impl_->subscriber.join();
  ::close(impl_->wake_pipe[0]);
  ::close(impl_->wake_pipe[1]);
}

std::optional<Verdict> RedisCache::get(std::string_view public_key, const Digest& presented) {
  Impl& impl = *impl_;
  const bool live = impl.local_live();
  std::uint64_t local_token = 0;
  if (live) {
    if (auto v = impl.local->get(public_key, presented)) return v;  // no I/O
    local_token = impl.local->fill_token(public_key);
  }
  impl.check_breaker();
  const std::string field = digest_field(presented);
  if (!live) {
    // No local copy to bound by the verdict's PTTL: the script-free lookup will do.
    std::optional<Verdict> v;
    if (impl.lookup(public_key, field, v)) return v;
  }
  Reply r = impl.script(kGet, {std::string(public_key), field});
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
      r->element[0]->type != REDIS_REPLY_INTEGER) {
    throw Error(ErrorCode::storage, "RedisCache get: unexpected reply");
  }
  if (r->element[0]->integer == 0) {
    impl.note_epoch(*r->element[2]);
    if (r->element[1]->type == REDIS_REPLY_INTEGER) {
      impl.remember_token(public_key, static_cast<std::uint64_t>(r->element[1]->integer));
    }
    return std::nullopt;
  }
  if (r->elements != 4 || r->element[1]->type != REDIS_REPLY_STRING) {
    throw Error(ErrorCode::storage, "RedisCache get: unexpected reply");
  }
  impl.note_epoch(*r->element[3]);
  std::optional<Verdict> v = decode(r->element[1]->str, r->element[1]->len);
  if (!v) {
    // Invariant 7: a miss. Expected while nodes of two layout versions share a prefix.
    impl.pool.report("decode",
                     "RedisCache get: a stored verdict does not decode (another layout "
                     "version, or damaged); taken as a miss");
  }
  const long long pttl = r->element[2]->type == REDIS_REPLY_INTEGER ? r->element[2]->integer : 0;
  if (v && live && pttl > 0 && impl.local_live()) {
    // Never longer locally than in Redis; the token refuses it if an invalidation
    // arrived since the lookup began.
    const auto ttl = std::min<std::chrono::milliseconds>(impl.options.local_ttl,
                                                         std::chrono::milliseconds(pttl));
    impl.local->put(public_key, presented, *v, ttl, local_token);
  }
  return v;
}

std::uint64_t RedisCache::fill_token(std::string_view public_key) {
  Impl& impl = *impl_;
  // Local part first: it must be at least as old as the Redis part is fresh... both
  // only ever need to be taken before the store read, which the caller guarantees.
  const std::uint32_t local =
      impl.local ? static_cast<std::uint32_t>(impl.local->fill_token(public_key)) : 0;
  std::uint32_t remote = 0;
  if (t_memo.owner == impl.serial && t_memo.public_key == public_key) {
    remote = t_memo.token;
    t_memo.owner = 0;
  } else {
    impl.check_breaker();
    Reply r = impl.script(kToken, {std::string(public_key)});
    if (r->type != REDIS_REPLY_INTEGER)
      throw Error(ErrorCode::storage, "RedisCache fill_token: unexpected reply");
    remote = static_cast<std::uint32_t>(r->integer);
  }
  return (std::uint64_t{remote} << 32) | local;
}

void RedisCache::put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
                     std::chrono::milliseconds ttl, std::uint64_t token) {
  if (ttl.count() <= 0) return;
  Impl& impl = *impl_;
  if (verdict.code == ValidationCode::not_found) {
    // Invariant 5: any well-formed public key yields one, so an attacker could grow
    // Redis without bound. The in-process tier is bounded.
    if (!impl.local_live()) return;
    const std::uint64_t current = impl.local->fill_token(public_key);
    const std::uint64_t local_token = (current & ~std::uint64_t{0xffffffff}) | (token & 0xffffffff);
    impl.local->put(public_key, presented, verdict, std::min(ttl, impl.options.local_ttl),
                    local_token);
    return;
  }
  const std::optional<std::string> value = encode(verdict);
  if (!value) return;  // not representable: caching nothing is always safe
  impl.check_breaker();
  const bool live = impl.local_live();
  // Redis refuses an expiry that overflows its clock: "forever" becomes ten years.
  constexpr std::int64_t kMaxTtlMs = 10LL * 366 * 24 * 3600 * 1000;
  const std::int64_t ttl_ms = std::min<std::int64_t>(ttl.count(), kMaxTtlMs);
  Reply r = impl.script(
      kPut, {std::string(public_key), digest_field(presented), std::to_string(token >> 32), *value,
             std::to_string(ttl_ms), verdict.code == ValidationCode::valid ? "1" : "0",
             std::to_string(std::max<std::size_t>(1, impl.options.max_verdicts_per_key)),
             Impl::random_start(), impl.generation_ttl_ms()});
  if (r->type != REDIS_REPLY_INTEGER)
    throw Error(ErrorCode::storage, "RedisCache put: unexpected reply");
  if (r->integer != 1 || !live || !impl.local_live()) return;
  // The local token is the low half: rebuild the full value from the current one (a
  // counter that moved on makes them differ, and the put is refused, as it should be).
  const std::uint64_t current = impl.local->fill_token(public_key);
  const std::uint64_t local_token = (current & ~std::uint64_t{0xffffffff}) | (token & 0xffffffff);
  impl.local->put(public_key, presented, verdict, std::min(ttl, impl.options.local_ttl),
                  local_token);
}

void RedisCache::erase(std::string_view public_key) {
  Impl& impl = *impl_;
  if (impl.local) impl.local->erase(public_key);
  // Always tried, breaker or not: a revoke should know whether Redis forgot the key.
  Reply r = impl.script(kErase, {std::string(public_key), impl.generation_ttl_ms(), impl.channel,
                                 impl.message_erase(public_key), Impl::random_start()});
  if (r->type != REDIS_REPLY_INTEGER)
    throw Error(ErrorCode::storage, "RedisCache erase: unexpected reply");
  // Again: a lookup here may have copied a verdict from Redis before the script ran.
  if (impl.local) impl.local->erase(public_key);
}

void RedisCache::clear() {
  Impl& impl = *impl_;
  if (impl.local) impl.local->clear();
  Reply r = impl.script(kClear, {Impl::random_step(), impl.channel, "C"});
  if (r->type != REDIS_REPLY_STRING)
    throw Error(ErrorCode::storage, "RedisCache clear: unexpected reply");
  impl.note_epoch(*r);
  if (impl.local) impl.local->clear();
}

bool RedisCache::local_tier_live() const noexcept { return impl_->local_live(); }

std::uint64_t RedisCache::invalidations_received() const noexcept {
  return impl_->received.load(std::memory_order_relaxed);
}

}  // namespace apikeys
