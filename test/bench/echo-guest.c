/*
 * The keystroke benchmark's guest: a TCP echo server on 127.0.0.1:<port>. Each
 * client gets its own process (the paths measured side by side each hold a
 * connection), and each read is written straight back. Nagle is off, as on a
 * QEMU chardev socket. Prints "ready" once listening.
 *
 *   gcc -O2 -o echo-guest echo-guest.c && ./echo-guest 5555
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  int server = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)atoi(argv[1]));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(server, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(server, 16) != 0) {
    perror("listen");
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  signal(SIGCHLD, SIG_IGN); /* no zombies */
  for (;;) {
    int client = accept(server, NULL, NULL);
    if (client < 0) continue;
    if (fork() != 0) {
      close(client);
      continue;
    }
    close(server);
    char buf[65536];
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (;;) {
      ssize_t n = read(client, buf, sizeof buf);
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(client, buf + off, (size_t)(n - off));
        if (w <= 0) break;
        off += w;
      }
    }
    return 0;
  }
}
