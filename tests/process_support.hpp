// Running a child program with captured stdout/stderr, for the CLI and reliability tests.
// Thread-safety: run_program may be called from any thread (fork() is followed only by
// async-signal-safe calls). Ownership: run_program reaps its child before returning.
#ifndef APIKEYS_TESTS_PROCESS_SUPPORT_HPP
#define APIKEYS_TESTS_PROCESS_SUPPORT_HPP

#include <fcntl.h>
#include <poll.h>
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

// Runs `argv` (argv[0] is the program's path) with environment `env` (NAME=value) and
// `input` on stdin; captures stdout and stderr. Everything the child needs is built
// before fork(), which is followed only by async-signal-safe calls and execve.
inline ProgramRun run_program(const std::vector<std::string>& args, const std::vector<std::string>& env,
                              const std::string& input = "") {
  std::vector<std::string> arg_store(args);
  std::vector<char*> argv;
  for (auto& a : arg_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_store(env);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);

  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe2 failed");
  }
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (dup2(in_pipe[0], 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) _exit(126);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (!input.empty()) {  // small inputs fit in the pipe buffer
    if (write(in_pipe[1], input.data(), input.size()) != static_cast<ssize_t>(input.size())) {
      close(in_pipe[1]);
      throw std::runtime_error("write to child stdin failed");
    }
  }
  close(in_pipe[1]);

  ProgramRun r;
  std::array<pollfd, 2> fds{{{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}}};
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
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.code = 128 + WTERMSIG(status);
  return r;
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_PROCESS_SUPPORT_HPP
