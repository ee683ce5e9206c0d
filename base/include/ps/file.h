/*
 * file.h — writing a small file so that no reader sees half of it.
 */
#ifndef PS_FILE_H
#define PS_FILE_H

/* Write `text` and a newline to `path` through a synced temporary file renamed into place, so
 * a reader (a test, a script, a healthcheck) never sees half of it: pid and ready files.
 * Returns 0, or -1 with errno set. */
int ps_write_file_atomic(const char *path, const char *text);

#endif
