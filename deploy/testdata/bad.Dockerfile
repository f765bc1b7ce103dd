# Root user, unpinned latest base, apt without cleanup, cd in RUN.
FROM debian:latest
RUN apt-get update && apt-get install curl
RUN cd /tmp && curl -o x http://example.invalid/x
CMD tasklab serve
