// RedisPool (redis_connection.hpp): the connections RedisCache and RedisLimiter share
// the code of.
#include "redis_connection.hpp"

#include <sys/socket.h>
#include <sys/time.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <utility>

#include "wipe.hpp"

namespace apikeys::detail {
namespace {

using SteadyClock = std::chrono::steady_clock;

timeval to_timeval(std::chrono::milliseconds ms) {
  const auto v = std::max<std::int64_t>(1, ms.count());
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(v / 1000);
  tv.tv_usec = static_cast<suseconds_t>((v % 1000) * 1000);
  return tv;
}

}  // namespace

class RedisPool::Lease {
 public:
  explicit Lease(RedisPool& pool) : pool_(pool) {
    const auto until = SteadyClock::now() + pool_.options_.command_timeout;
    MutexLock lock(pool_.pool_mu_);
    while (pool_.idle_.empty() && pool_.open_ >= pool_.options_.pool_size) {
      if (!pool_.pool_cv_.wait_until(pool_.pool_mu_, until) && pool_.idle_.empty() &&
          pool_.open_ >= pool_.options_.pool_size) {
        throw Error(ErrorCode::busy,
                    fmt::format("{}: no free connection within command_timeout", pool_.name_));
      }
    }
    if (!pool_.idle_.empty()) {
      c_ = std::move(pool_.idle_.back());
      pool_.idle_.pop_back();
      reused_ = true;
      return;
    }
    ++pool_.open_;
    lock.unlock();
    try {
      c_ = pool_.connect(true);
    } catch (...) {
      lock.lock();
      --pool_.open_;
      pool_.pool_cv_.signal();
      throw;
    }
  }
  ~Lease() { release(); }
  // Gives the connection back to the pool (or, once discarded, frees its place) now
  // rather than at destruction; the destructor then does nothing.
  void release() noexcept {
    if (released_) return;
    released_ = true;
    MutexLock lock(pool_.pool_mu_);
    if (c_) {
      // Cannot allocate: idle_.size() < open_ <= pool_size, reserved in the constructor.
      pool_.idle_.push_back(std::move(c_));
    } else {
      --pool_.open_;
    }
    pool_.pool_cv_.signal();
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  redisContext& operator*() const noexcept { return *c_; }
  void discard() noexcept { c_.reset(); }
  bool reused() const noexcept { return reused_; }

 private:
  RedisPool& pool_;
  RedisContext c_;
  bool reused_ = false;
  bool released_ = false;  // release() ran
};

RedisPool::RedisPool(std::string name, RedisCacheOptions&& options,
                     std::vector<const char*> scripts)
    : name_(std::move(name)),
      password_(std::move(options.password)),
      observers_(std::move(options.observers)),
      options_(std::move(options)),
      scripts_(std::move(scripts)) {
  {
    MutexLock lock(sha_mu_);
    shas_.resize(scripts_.size());
  }
  MutexLock lock(pool_mu_);
  idle_.reserve(options_.pool_size);
}

RedisPool::~RedisPool() { wipe(password_); }

std::int64_t RedisPool::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch())
      .count();
}

void RedisPool::trip(std::string_view reason) noexcept {
  down_until_.store(
      now_ns() +
          std::chrono::duration_cast<std::chrono::nanoseconds>(options_.retry_interval).count(),
      std::memory_order_relaxed);
  // One "breaker_open" per outage: a trip while it is open (the retry after the
  // interval failed too) only extends it.
  if (!observers_.empty() && !reported_open_.exchange(true, std::memory_order_acq_rel)) {
    report("breaker_open", reason);
  }
}

void RedisPool::answered() noexcept {
  // Acquire: seeing the trip's report means seeing the down_until_ it stored first.
  if (observers_.empty() || !reported_open_.load(std::memory_order_acquire)) return;
  // A command that was already in flight when the breaker tripped does not close it:
  // only one sent once callers try Redis again.
  if (now_ns() < down_until_.load(std::memory_order_relaxed)) return;
  if (reported_open_.exchange(false, std::memory_order_acq_rel)) {
    report("breaker_close", {}, true);
  }
}

void RedisPool::report(std::string_view operation, std::string_view message,
                       bool recovered) const noexcept {
  observers_.error(Component::redis, operation, message, recovered);
}

void RedisPool::check_breaker() const {
  if (now_ns() < down_until_.load(std::memory_order_relaxed)) {
    throw Error(ErrorCode::busy, fmt::format("{}: Redis unavailable (retrying later)", name_));
  }
}

RedisContext RedisPool::connect(bool load_scripts) {
  RedisContext c(redisConnectWithTimeout(options_.host.c_str(), options_.port,
                                         to_timeval(options_.connect_timeout)));
  if (!c) throw RedisUnreachable(fmt::format("{} connect failed: out of memory", name_));
  if (c->err) throw RedisUnreachable(fmt::format("{} connect failed: {}", name_, c->errstr));
  if (redisSetTimeout(c.get(), to_timeval(options_.command_timeout)) != REDIS_OK) {
    throw RedisUnreachable(fmt::format("{} connect failed: cannot set the socket timeout", name_));
  }
  if (!password_.empty()) {
    RedisReply r = authenticate(*c);
    // A refused AUTH fails every connection the same way: trip the breaker (as for a
    // connection failure) rather than paying a connect per request. The reply is not
    // quoted (it is the server's text), and never holds the password anyway.
    if (r->type == REDIS_REPLY_ERROR) throw RedisUnreachable(name_ + ": AUTH refused");
  }
  if (options_.database != 0) {
    RedisReply r = command(*c, {"SELECT", std::to_string(options_.database)});
    if (r->type == REDIS_REPLY_ERROR) throw Error(ErrorCode::storage, name_ + ": SELECT refused");
  }
  if (load_scripts) {
    for (std::size_t i = 0; i < scripts_.size(); ++i) {
      RedisReply r = command(*c, {"SCRIPT", "LOAD", scripts_[i]});
      if (r->type != REDIS_REPLY_STRING) {
        throw Error(ErrorCode::storage,
                    fmt::format("{}: SCRIPT LOAD failed: {}", name_, reply_text(*r)));
      }
      MutexLock lock(sha_mu_);
      shas_[i].assign(r->str, r->len);
    }
    if (server_hook_) server_hook_(*c);
  }
  return c;
}

std::string RedisPool::reply_text(const redisReply& r) {
  if (r.type == REDIS_REPLY_ERROR || r.type == REDIS_REPLY_STATUS) return std::string(r.str, r.len);
  return "unexpected reply";
}

// AUTH, without handing the password to hiredis: hiredis formats a command into buffers
// it frees unwiped. This one is formatted here, in one buffer (reserved, so no
// reallocation leaves a copy behind) wiped after it is sent, and written straight to the
// socket: the context's output buffer is empty (AUTH is a fresh connection's first
// command) and blocking, with the send timeout set. The reply is read by hiredis as usual.
RedisReply RedisPool::authenticate(redisContext& c) const {
  const std::string length = std::to_string(password_.size());
  std::string cmd;
  const WipeOnExit wipe_cmd(cmd);
  cmd.reserve(32 + length.size() + password_.size());
  cmd.append("*2\r\n$4\r\nAUTH\r\n$")
      .append(length)
      .append("\r\n")
      .append(password_)
      .append("\r\n");
  for (std::size_t sent = 0; sent < cmd.size();) {
    const ssize_t n = ::send(c.fd, cmd.data() + sent, cmd.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      const bool timed_out = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
      throw RedisUnreachable(timed_out ? name_ + " connect failed: AUTH timed out"
                                       : name_ + " connect failed: cannot send AUTH");
    }
  }
  void* raw = nullptr;
  if (redisGetReply(&c, &raw) != REDIS_OK || raw == nullptr) broken(c);
  return RedisReply(static_cast<redisReply*>(raw));
}

void RedisPool::broken(const redisContext& c) const {
  const bool closed =
      c.err == REDIS_ERR_EOF || (c.err == REDIS_ERR_IO && (errno == ECONNRESET || errno == EPIPE));
  throw RedisUnreachable(fmt::format("{} command failed: {}", name_, c.err ? c.errstr : "no reply"),
                         closed);
}

RedisReply RedisPool::command(redisContext& c, const std::vector<std::string_view>& args) const {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (auto a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  void* raw = redisCommandArgv(&c, static_cast<int>(argv.size()), argv.data(), lens.data());
  if (raw == nullptr) broken(c);
  return RedisReply(static_cast<redisReply*>(raw));
}

void RedisPool::drop_idle() noexcept {
  {
    MutexLock lock(pool_mu_);
    open_ -= idle_.size();
    idle_.clear();
  }
  pool_cv_.signal_all();
}

template <typename F>
RedisReply RedisPool::with_connection(F&& f, const bool* sent) {
  for (int attempt = 0;; ++attempt) {
    std::optional<Lease> c;
    try {
      c.emplace(*this);  // may connect: a refused or slow connect is unreachable too
      RedisReply r = f(*c);
      // Back in the pool before an observer hears of it: one may use this pool itself.
      c->release();
      answered();  // Redis answered (an error reply too): the breaker may close
      if (r->type == REDIS_REPLY_ERROR) {
        throw Error(ErrorCode::storage, fmt::format("{}: {}", name_, reply_text(*r)));
      }
      return r;
    } catch (const RedisUnreachable& e) {
      const bool stale = c && c->reused() && e.retryable() && !(sent != nullptr && *sent);
      if (c) {
        c->discard();
        c->release();  // its place freed before the observers hear of it
      }
      drop_idle();
      // A pooled connection the server closed (it restarted) fails once and is retried
      // on a fresh one; anything else means Redis is unavailable for now.
      if (attempt > 0 || !stale) {
        trip(e.what());
        throw Error(ErrorCode::busy, e.what());
      }
      report("reconnect", e.what());
    }
  }
}

RedisReply RedisPool::script(std::size_t id, const std::vector<std::string_view>& keys,
                             const std::vector<std::string_view>& args, bool at_most_once,
                             bool* was_sent) {
  const std::string numkeys = std::to_string(keys.size());
  // Written where the caller reads it, so it is told on every way out, a throw included.
  if (was_sent != nullptr) *was_sent = false;
  bool unused = false;
  bool& sent = was_sent != nullptr ? *was_sent : unused;
  return with_connection(
      [&](Lease& c) {
        std::string sha;
        {
          MutexLock lock(sha_mu_);
          sha = shas_[id];
        }
        std::vector<std::string_view> argv{"EVALSHA", sha, numkeys};
        argv.insert(argv.end(), keys.begin(), keys.end());
        argv.insert(argv.end(), args.begin(), args.end());
        if (at_most_once) {
          if (c.reused()) check_open(*c);  // before anything is sent: a retry is safe
          sent = true;
        }
        RedisReply r = command(*c, argv);
        if (r->type == REDIS_REPLY_ERROR &&
            std::string_view(r->str, r->len).substr(0, 8) == "NOSCRIPT") {
          // A server that forgot the scripts may be another one, or this one restarted.
          // A connection the hook could not settle goes, never back to the pool.
          if (server_hook_) {
            try {
              server_hook_(*c);
            } catch (...) {
              c.discard();
              throw;
            }
          }
          argv[0] = "EVAL";
          argv[1] = scripts_[id];
          r = command(*c, argv);
        }
        return r;
      },
      &sent);
}

void RedisPool::check_open(const redisContext& c) const {
  // An idle connection has nothing to read: any byte, or the end of the stream, means
  // the server closed it (a restart, an idle timeout) or wrote out of turn.
  char byte = 0;
  const ssize_t n = ::recv(c.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  throw RedisUnreachable(fmt::format("{}: a pooled connection was closed", name_), true);
}

RedisReply RedisPool::run(const std::vector<std::string_view>& argv) {
  return with_connection([&](Lease& c) { return command(*c, argv); });
}

}  // namespace apikeys::detail
