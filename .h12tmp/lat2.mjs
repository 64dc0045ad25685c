import ssh2 from 'ssh2'; import { readFileSync } from 'node:fs';
const nd = process.argv[2] === '1';
const c = new ssh2.Client();
c.on('ready', async () => {
  if (nd) c.setNoDelay(true);
  const run = () => new Promise((res) => c.exec('true', (e, ch) => { ch.on('close', res); ch.resume(); ch.stderr.resume(); }));
  await run();
  for (let i = 0; i < 6; i++) { const s = performance.now(); await run(); console.log('nodelay', nd, (performance.now() - s).toFixed(1)); }
  c.end();
}).connect({ host: '127.0.0.1', port: 2222, username: 'root', privateKey: readFileSync('/tmp/virtstream-lab/ssh/client_key') });
