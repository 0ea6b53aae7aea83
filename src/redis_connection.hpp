// Private: what RedisCache and RedisLimiter share to talk to Redis: a pool of blocking
// hiredis connections with socket timeouts, AUTH that leaves no unwiped copy of the
// password, a breaker that keeps callers off a dead server for retry_interval, and
// scripts run by EVALSHA (EVAL when the server forgot them), and the observers both
// report to (breaker and reconnect events here; the rest in their own files).
// Thread-safety: RedisPool's methods are safe from many threads at once; observers are
// called on the thread that met the event.
// Ownership: RedisPool owns its connections and its copy of the options (password
// included, wiped on destruction; observers moved out into its ObserverList); replies
// are owned by the caller.
#ifndef APIKEYS_SRC_REDIS_CONNECTION_HPP
#define APIKEYS_SRC_REDIS_CONNECTION_HPP

#include <hiredis/hiredis.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/redis_cache.hpp"
#include "observer_list.hpp"
#include "thread_annotations.hpp"

namespace apikeys::detail {

struct RedisReplyDeleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using RedisReply = std::unique_ptr<redisReply, RedisReplyDeleter>;

struct RedisContextDeleter {
  void operator()(redisContext* c) const noexcept { redisFree(c); }
};
using RedisContext = std::unique_ptr<redisContext, RedisContextDeleter>;

// A connection failed or timed out: discard it and trip the breaker.
// `retryable`: the server closed the connection (it restarted, or dropped an idle
// client), so one fresh connection may well work; a timeout is not retried, so no call
// waits longer than its timeouts.
class RedisUnreachable : public Error {
 public:
  explicit RedisUnreachable(const std::string& m, bool retryable = false)
      : Error(ErrorCode::busy, m), retryable_(retryable) {}
  bool retryable() const noexcept { return retryable_; }

 private:
  bool retryable_;
};

// The pool. `name` starts every message ("RedisCache"); `scripts` are loaded on every
// new command connection and run by index with script().
class RedisPool {
 public:
  // Moves the password and the observers out of `options` (the caller wipes what the
  // move leaves). Throws Error(invalid_argument) for a null observer.
  RedisPool(std::string name, RedisCacheOptions&& options, std::vector<const char*> scripts);
  ~RedisPool();
  RedisPool(const RedisPool&) = delete;
  RedisPool& operator=(const RedisPool&) = delete;

  const RedisCacheOptions& options() const noexcept { return options_; }
  const std::string& name() const noexcept { return name_; }

  // Throws Error(busy) while the breaker is open.
  void check_breaker() const;
  // Opens the breaker for retry_interval; `reason` (no password in it) goes to the
  // observers if it was closed.
  void trip(std::string_view reason) noexcept;

  // The observers (Component::redis). observers().empty(): build no event.
  const ObserverList& observers() const noexcept { return observers_; }
  // Reports a handled failure (or its end, when `recovered`) to the observers; does
  // nothing when there are none. `message` must hold no password.
  void report(std::string_view operation, std::string_view message,
              bool recovered = false) const noexcept;

  // Opens a connection with timeouts, AUTH and SELECT done (and, when `load_scripts`,
  // the scripts loaded and the server hook run). Throws RedisUnreachable when the
  // server cannot be reached, and what the hook throws.
  RedisContext connect(bool load_scripts);

  // Runs on every new command connection before its first command, and on a connection
  // whose server answered NOSCRIPT (it forgot the scripts: SCRIPT FLUSH, or another
  // server behind the same connection): what must be settled with a server before it is
  // trusted. A connection whose hook throws is discarded. Set once, before the first
  // connection; null: none.
  using ServerHook = std::function<void(redisContext&)>;
  void set_server_hook(ServerHook hook) { server_hook_ = std::move(hook); }

  // Runs script `id` with `keys` KEYS then `args`: EVALSHA, or EVAL if the server
  // forgot it (SCRIPT FLUSH, restart). A broken connection is discarded and trips the
  // breaker; a server that restarted is retried once on a fresh connection. With
  // `at_most_once` (a script that must not run twice), a pooled connection is first
  // checked for a close the server already sent (then retried, nothing having been
  // sent), and a connection that breaks once the script was sent is not retried: the
  // server may have run it and lost only the reply. Throws Error(busy) when Redis is
  // unavailable, Error(storage) for an error reply. With `at_most_once`, `*sent` (when
  // given) says on return or throw whether the script may have reached the server:
  // false means it certainly did not run.
  RedisReply script(std::size_t id, const std::vector<std::string_view>& keys,
                    const std::vector<std::string_view>& args, bool at_most_once = false,
                    bool* sent = nullptr);

  // Runs one plain command on a pooled connection, with the same failure handling.
  RedisReply run(const std::vector<std::string_view>& argv);

  // One command on `c`; throws RedisUnreachable if the connection broke or timed out.
  RedisReply command(redisContext& c, const std::vector<std::string_view>& args) const;
  static std::string reply_text(const redisReply& r);

  // Closes every idle connection.
  void drop_idle() noexcept;

 private:
  class Lease;
  // Runs f(lease), retrying once on a fresh connection when a pooled one turns out to
  // have been closed by the server, unless `sent` is set (f sets it once a command that
  // must not run twice has gone out).
  template <typename F>
  RedisReply with_connection(F&& f, const bool* sent = nullptr);
  RedisReply authenticate(redisContext& c) const;
  [[noreturn]] void broken(const redisContext& c) const;
  // Throws RedisUnreachable (retryable) when the server has closed idle connection `c`.
  void check_open(const redisContext& c) const;
  // A command succeeded: reports the breaker closing if it had opened and its interval
  // is over. Cheap when it is closed (one relaxed load).
  void answered() noexcept;
  static std::int64_t now_ns();

  const std::string name_;
  std::string password_;          // AUTH password (empty: none). Wiped by the destructor.
  const ObserverList observers_;  // before options_: moved out of the options first
  const RedisCacheOptions options_;
  const std::vector<const char*> scripts_;
  ServerHook server_hook_;

  // Hashes of the scripts, learnt from SCRIPT LOAD (the same on every connection).
  Mutex sha_mu_;
  std::vector<std::string> shas_ APIKEYS_GUARDED_BY(sha_mu_);

  // pool_cv_ is signalled whenever a connection goes back to `idle_` or `open_` drops.
  Mutex pool_mu_;
  CondVar pool_cv_;
  std::vector<RedisContext> idle_ APIKEYS_GUARDED_BY(pool_mu_);
  std::size_t open_ APIKEYS_GUARDED_BY(pool_mu_) = 0;

  // Breaker: callers skip Redis until this steady time (ns since epoch).
  std::atomic<std::int64_t> down_until_{0};
  // True from a trip reported as "breaker_open" until the first command answered after
  // down_until_, reported as "breaker_close". Only kept when there are observers.
  std::atomic<bool> reported_open_{false};
};

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_REDIS_CONNECTION_HPP
