# seed002_client.py: the reference client of the hellod tutorial (seed 002), kept as the
# tutorial has it. It talks to 127.0.0.1:9999 and expects the `chunk` framing; the
# integration test runs it unchanged inside a private network namespace. Do not edit its
# logic: the test checks that the daemon still serves this exact client.
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(('127.0.0.1', 9999))
print(s.recv(1024).decode('utf-8'))
for data in [b'Michael', b'Tracy', b'Sarah']:
    s.send(data)
    print(s.recv(1024).decode('utf-8'))
s.send(b'exit')
s.close()
