// Running a child program with captured stdout/stderr, for the CLI and reliability tests:
// run_program() in one go, or start_program() and finish_program() around a look at the
// running child. Thread-safety: these may be called from any thread (fork() is followed
// only by async-signal-safe calls). Ownership: run_program and finish_program reap the
// child; a StartedProgram must be finished by its caller.
#ifndef APIKEYS_TESTS_PROCESS_SUPPORT_HPP
#define APIKEYS_TESTS_PROCESS_SUPPORT_HPP

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <stdexcept>
#include <string>
#include <vector>

namespace apikeys_test {

struct ProgramRun {
  int code = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

// A child started by start_program(), still running: write to (or just close) its
// stdin, look at it in /proc, then collect it with finish_program(). One that is never
// finished (a failed REQUIRE) is killed and reaped when this object dies.
struct StartedProgram {
  StartedProgram(pid_t p, int in, int out, int err) noexcept
      : pid(p), stdin_fd(in), stdout_fd(out), stderr_fd(err) {}
  StartedProgram(const StartedProgram&) = delete;
  StartedProgram& operator=(const StartedProgram&) = delete;
  ~StartedProgram() {
    for (int fd : {stdin_fd, stdout_fd, stderr_fd}) {
      if (fd >= 0) close(fd);
    }
    if (pid > 0) {
      kill(pid, SIGKILL);
      while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }

  pid_t pid;
  int stdin_fd;  // the write end of the child's stdin
  int stdout_fd;
  int stderr_fd;
};

// Who the child runs as: unchanged, or (when the caller is root) another uid/gid.
struct RunAs {
  bool change = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Starts `args` (args[0] is the program's path) with environment `env` (NAME=value),
// its stdin, stdout and stderr on pipes. Everything the child needs is built before
// fork(), which is followed only by async-signal-safe calls and execve. The child exits
// 126 if it cannot set up its pipes, 125 if it cannot become `run_as`, 127 if execve
// fails.
inline StartedProgram start_program(const std::vector<std::string>& args,
                                    const std::vector<std::string>& env, RunAs run_as = {}) {
  std::vector<std::string> arg_store(args);
  std::vector<char*> argv;
  for (auto& a : arg_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_store(env);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);

  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 ||
      pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe2 failed");
  }
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (dup2(in_pipe[0], 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) _exit(126);
    if (run_as.change &&
        (setgroups(0, nullptr) != 0 || setgid(run_as.gid) != 0 || setuid(run_as.uid) != 0)) {
      _exit(125);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  return {pid, in_pipe[1], out_pipe[0], err_pipe[0]};
}

// Writes `input` to the child's stdin and closes it, collects stdout and stderr until
// the child closes them, and reaps it.
inline ProgramRun finish_program(StartedProgram& child, const std::string& input = "") {
  if (child.stdin_fd >= 0) {
    // Small inputs fit in the pipe buffer.
    if (!input.empty() &&
        write(child.stdin_fd, input.data(), input.size()) != static_cast<ssize_t>(input.size())) {
      close(child.stdin_fd);
      child.stdin_fd = -1;
      throw std::runtime_error("write to child stdin failed");
    }
    close(child.stdin_fd);
    child.stdin_fd = -1;
  }

  ProgramRun r;
  std::array<pollfd, 2> fds{{{child.stdout_fd, POLLIN, 0}, {child.stderr_fd, POLLIN, 0}}};
  std::array<std::string*, 2> sinks{&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds.data(), fds.size(), 60'000) <= 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  child.stdout_fd = child.stderr_fd = -1;
  int status = 0;
  while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  child.pid = -1;
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.code = 128 + WTERMSIG(status);
  return r;
}

// True once the child has exited (it is left to be reaped by finish_program).
inline bool has_exited(const StartedProgram& child) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(child.pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid != 0;
}

// The whole content of a file, /proc files included (which stat() says are empty);
// empty if it cannot be read.
inline std::string read_file(const std::string& path) {
  std::string out;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  ssize_t n = 0;
  while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) out.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  return out;
}

// Runs `args` with environment `env` and `input` on stdin; captures stdout and stderr.
inline ProgramRun run_program(const std::vector<std::string>& args,
                              const std::vector<std::string>& env, const std::string& input = "") {
  StartedProgram child = start_program(args, env);
  return finish_program(child, input);
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_PROCESS_SUPPORT_HPP
