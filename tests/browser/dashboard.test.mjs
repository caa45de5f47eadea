// The dashboard in a real browser: headless Debian chromium driven by playwright-core against
// a running quantd (started by tests/e2e_dashboard.sh). Uploads the fixtures through the form,
// checks that the API's 422 lands next to its field, submits a small job, follows it to the
// end on the job page, reads the report tables and plots, saves a screenshot, checks the jobs
// list's headline columns (loss, Δppl of the integer model, gate, failure reason), the layout
// at 420 px, the favicon, a Hugging Face directory through the checkpoint field (several files,
// and a folder) with the tokenizer field, and the token prompt of a server with auth on. Prints "PASS name" /
// "FAIL name: why" per check.
//
// env: QD_URL (server without auth), QD_AUTH_URL + QD_AUTH_TOKEN (server with a token file;
// optional), QD_MODEL, QD_CALIB, QD_NAN (a GGUF with a NaN weight), QD_HF (a Hugging Face directory), QD_TOK (its tokenizer) (fixture
// files), QD_SHOT (screenshot path), CHROMIUM.
import { chromium } from 'playwright-core';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const URL = process.env.QD_URL;
const MODEL = process.env.QD_MODEL, CALIB = process.env.QD_CALIB;
const SHOT = process.env.QD_SHOT || path.join(os.tmpdir(), 'quantd-dashboard.png');
let failed = 0;
function check(name, ok, why = '') {
  console.log(ok ? `PASS ${name}` : `FAIL ${name}: ${why}`);
  if (!ok) failed++;
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'quantd-chromium-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = ctx.pages()[0] || await ctx.newPage();
page.setDefaultTimeout(20000);
const origin = new globalThis.URL(URL).origin;
const foreign = [];
const consoleErrors = [];
page.on('request', r => {
  const u = r.url();
  if (!u.startsWith(origin) && !u.startsWith('data:') && !u.startsWith('blob:')) foreign.push(u);
});
page.on('pageerror', e => consoleErrors.push(String(e)));
const favicon404 = [];
page.on('response', r => { if (/favicon/.test(r.url()) && r.status() >= 400) favicon404.push(`${r.status()} ${r.url()}`); });
// a page wider than the window scrolls sideways: nothing may stick out past innerWidth
const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

try {
  // ---- the jobs view of an empty server ----
  const resp = await page.goto(URL + '/');
  check('dashboard_served', resp && resp.status() === 200 && (await page.title()) === 'quantd',
        `status ${resp && resp.status()}, title ${await page.title()}`);
  await page.waitForSelector('#jobs-empty:not([hidden])');
  check('empty_jobs_table', (await page.locator('#jobs-table tbody tr').count()) === 0);

  // ---- the form: files, then a budget the API refuses ----
  await page.setInputFiles('#f-model', MODEL);
  await page.setInputFiles('#f-calib', CALIB);
  await page.fill('#f-samples', '0');
  await page.fill('#f-seq-len', '32');
  await page.fill('#f-epochs', '2');
  await page.fill('#f-gate', '50');
  await page.fill('#f-labels', 'suite=e2e');
  await page.click('#submit-btn');
  const errSlot = page.locator('.err[data-err-for="budget.samples"]');
  await errSlot.filter({ hasText: /\S/ }).waitFor();
  const errText = await errSlot.textContent();
  check('api_422_shown_at_field', /samples/.test(errText), `got "${errText}"`);
  check('field_marked_invalid', (await page.getAttribute('#f-samples', 'aria-invalid')) === 'true');
  const upModel = await page.textContent('#up-model span');
  const upProg = await page.evaluate(() => document.querySelector('#up-model progress').value);
  check('upload_progress_complete', upProg === 1 && /uploaded|already/.test(upModel), `${upProg} "${upModel}"`);

  // ---- fixed: submit for real; the page moves to the job ----
  await page.fill('#f-samples', '4');
  await page.click('#submit-btn');
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
  const jobId = page.url().split('/').pop();
  check('submitted_job_page', /^[0-9a-f-]{36}$/.test(jobId), page.url());
  check('resubmit_skipped_upload', /already uploaded/.test(await page.textContent('#up-model span') || ''),
        await page.textContent('#up-model span'));

  // ---- live progress until it finishes ----
  await page.waitForFunction(() => document.querySelector('#job-state').textContent === 'succeeded',
                             null, { timeout: 90000 });
  check('job_succeeded', true);
  await page.waitForSelector('#report-eval tbody tr[data-variant="fp32"]');
  const log = await page.textContent('#log');
  check('log_from_events', /state running/.test(log) && /phase optimize/.test(log) && /state succeeded/.test(log),
        log.slice(0, 400));
  check('cancel_hidden_when_done', await page.isHidden('#cancel-btn'));

  // ---- the report ----
  const rows = await page.$$eval('#report-eval tbody tr', trs => trs.map(tr => ({
    v: tr.dataset.variant, cells: [...tr.cells].map(td => td.textContent) })));
  const byV = Object.fromEntries(rows.map(r => [r.v, r.cells]));
  const num = s => parseFloat(s);
  check('report_fp32_row', byV.fp32 && num(byV.fp32[1]) > 1 && /100\.00%/.test(byV.fp32[4]), JSON.stringify(byV.fp32));
  check('report_mobilequant_row', byV.mobilequant && num(byV.mobilequant[1]) > 1 && /%/.test(byV.mobilequant[2]),
        JSON.stringify(byV.mobilequant));
  check('report_baselines', !!(byV.rtn && byV.smoothquant), Object.keys(byV).join(','));
  const sizeText = await page.textContent('#report-size');
  check('report_sizes', /B$/.test((byV.mobilequant || [])[5] || ''), JSON.stringify(byV.mobilequant));
  check('report_size_in_words', /Weights only/.test(sizeText) && /Whole artifact/.test(sizeText) &&
        /bits per weight/.test(sizeText) && /smaller than FP32/.test(sizeText) && /FP16/.test(sizeText),
        sizeText.slice(0, 300));
  check('report_gate_verdict', /gate (passed|FAILED)/.test(await page.textContent('#gate-verdict')));
  const nLoss = await page.evaluate(() => {
    const l = document.querySelector('#loss-line');
    return l ? l.getAttribute('points').trim().split(/\s+/).length : 0;
  });
  check('loss_curve_plotted', nLoss >= 2, `${nLoss} points`);
  const raw = await page.evaluate(() => {
    const l = document.querySelector('#loss-raw');
    return l ? { n: l.getAttribute('points').trim().split(/\s+/).length, op: Number(l.getAttribute('stroke-opacity')) } : null;
  });
  check('loss_raw_faint_behind_smoothed', raw && raw.n === nLoss && raw.op > 0 && raw.op < 0.5 &&
        await page.evaluate(() => document.querySelector('#loss-raw').compareDocumentPosition(document.querySelector('#loss-line')) & Node.DOCUMENT_POSITION_FOLLOWING),
        JSON.stringify(raw));
  // what the page should show follows what the report holds
  const report = await (await page.request.get(`${URL}/v1/jobs/${jobId}/report`)).json();
  const layers = await page.evaluate(() => document.querySelectorAll('#layer-svg .layer-bar').length);
  if (Array.isArray(report.per_layer) && report.per_layer.length)
    check('per_layer_chart', layers >= report.per_layer.length, `${layers} bars for ${report.per_layer.length} layers`);
  else
    check('per_layer_note', await page.isVisible('#layer-none'), 'no note for a report without per_layer');
  if (report.eval && report.eval.int)
    check('report_int_runtime_row', byV.int && Math.abs(num(byV.int[1]) - report.eval.int.ppl) < 1e-3,
          JSON.stringify(byV.int));
  const arts = await page.$$eval('#artifacts a[data-artifact]', as => as.map(a => [a.dataset.artifact, a.href]));
  check('artifact_links', arts.some(([n]) => n === 'report.json'), JSON.stringify(arts));
  if (arts.length) {
    const r = await page.request.get(arts.find(([n]) => n === 'report.json')?.[1] || arts[0][1]);
    check('artifact_downloads', r.status() === 200, `HTTP ${r.status()}`);
  }
  fs.mkdirSync(path.dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });
  check('screenshot_saved', fs.statSync(SHOT).size > 10000, SHOT);
  console.log(`  screenshot: ${SHOT}`);

  // ---- a Hugging Face directory: several picked files plus the tokenizer field ----
  const HF = process.env.QD_HF, TOK = process.env.QD_TOK;
  const sha = f => 'sha256:' + crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
  const submitted = async prev => {
    await page.click('#submit-btn');
    await page.waitForFunction(p => /#\/jobs\/[0-9a-f-]{36}$/.test(location.hash) && !location.hash.endsWith(p), prev);
    const id = page.url().split('/').pop();
    return [id, await (await page.request.get(`${URL}/v1/jobs/${id}`)).json()];
  };
  await page.goto(URL + '/#/');
  await page.setInputFiles('#f-model', [path.join(HF, 'config.json'), path.join(HF, 'model.safetensors')]);
  await page.setInputFiles('#f-tok', TOK);
  const [dirId, dirJob] = await submitted(jobId);
  check('dir_files_submitted', dirJob.spec && typeof dirJob.spec.model === 'object' &&
        Object.keys(dirJob.spec.model).join(',') === 'config.json,model.safetensors' &&
        dirJob.spec.model['model.safetensors'] === sha(path.join(HF, 'model.safetensors')) &&
        dirJob.spec.tokenizer === sha(TOK), JSON.stringify(dirJob.spec && [dirJob.spec.model, dirJob.spec.tokenizer]));
  check('dir_upload_status', /^2 files uploaded/.test(await page.textContent('#up-model span')) &&
        /uploaded/.test(await page.textContent('#up-tok span')), await page.textContent('#up-model span'));
  await page.waitForFunction(() => /files:/.test(document.querySelector('#job-meta').textContent), null,
                             { timeout: 10000 }).catch(() => {});
  check('dir_job_page_names_files', /2 files: config\.json, model\.safetensors/.test(await page.textContent('#job-meta')),
        (await page.textContent('#job-meta')).slice(0, 300));
  let dj = dirJob;
  for (let i = 0; i < 450 && !['succeeded', 'failed', 'cancelled'].includes(dj.state); i++) {
    await page.waitForTimeout(200);
    dj = await (await page.request.get(`${URL}/v1/jobs/${dirId}`)).json();
  }
  check('dir_job_succeeded', dj.state === 'succeeded', `${dj.state} ${dj.error || ''}`);
  // ... and the folder picker: paths inside the folder, hidden files left out
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'quantd-hf-'));
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(HF, f), path.join(folder, f));
  fs.copyFileSync(TOK, path.join(folder, 'tokenizer.bin'));
  fs.writeFileSync(path.join(folder, '.gitattributes'), '*.safetensors filter=lfs\n');
  await page.goto(URL + '/#/');
  await page.setInputFiles('#f-model', []);
  await page.setInputFiles('#f-tok', []);
  await page.setInputFiles('#f-model-dir', folder);
  const [folderId, folderJob] = await submitted(dirId);
  check('folder_submitted', folderJob.spec && typeof folderJob.spec.model === 'object' &&
        Object.keys(folderJob.spec.model).sort().join(',') === 'config.json,model.safetensors,tokenizer.bin' &&
        !folderJob.spec.tokenizer && folderJob.spec.labels.model_file === path.basename(folder),
        JSON.stringify(folderJob.spec && [folderJob.spec.model, folderJob.spec.labels]));
  await page.request.post(`${URL}/v1/jobs/${folderId}/cancel`);
  fs.rmSync(folder, { recursive: true, force: true });

  // ---- a long job: live progress while it runs, then Cancel ----
  const done = await (await page.request.get(`${URL}/v1/jobs/${jobId}`)).json();
  const r2 = await page.request.post(`${URL}/v1/jobs`, { data: {
    model: done.spec.model, calibration: done.spec.calibration,
    budget: { samples: 64, seq_len: 64, epochs: 1000 }, labels: { suite: 'e2e-cancel' } } });
  check('long_job_submitted', r2.status() === 201, `HTTP ${r2.status()}`);
  const longId = (await r2.json()).id;
  await page.goto(`${URL}/#/jobs/${longId}`);
  await page.waitForFunction(() => /^stage \d+ of \d+: mobilequant optimize$/.test(document.querySelector('#p-phase').textContent) &&
    /^\d+\/\d+$/.test(document.querySelector('#p-step').textContent) &&
    document.querySelector('#p-loss').textContent !== '-', null, { timeout: 60000 });
  check('live_progress_from_sse', true);
  await page.waitForFunction(() => {
    const l = document.querySelector('#loss-line');
    return l && l.getAttribute('points').trim().split(/\s+/).length >= 12;
  }, null, { timeout: 60000 });
  check('live_loss_curve', true);
  // the smoothed line moves less than the raw steps it averages
  const tv = await page.evaluate(() => ['#loss-raw', '#loss-line'].map(id => {
    const ys = document.querySelector(id).getAttribute('points').trim().split(/\s+/).map(p => Number(p.split(',')[1]));
    return ys.slice(1).reduce((a, y, i) => a + Math.abs(y - ys[i]), 0);
  }));
  check('loss_smoothed', tv[1] <= tv[0] && /mean over \d+ steps/.test(await page.textContent('#loss-caption')),
        `variation raw ${tv[0]} smoothed ${tv[1]}; ${await page.textContent('#loss-caption')}`);
  check('eta_shown', (await page.textContent('#p-eta')) !== '-', await page.textContent('#p-eta'));
  // the run's ETA, once a stage has finished (the FP32 evaluation)
  check('run_eta_shown', /\d/.test(await page.textContent('#p-eta-total')), await page.textContent('#p-eta-total'));
  await page.click('#cancel-btn');
  await page.waitForFunction(() => document.querySelector('#job-state').textContent === 'cancelled',
                             null, { timeout: 60000 });
  check('cancel_button', await page.isHidden('#cancel-btn'));

  // ---- a job that fails at once: a NaN weight (its headers pass the door; loading finds it) ----
  const nanBlob = await (await page.request.post(`${URL}/v1/blobs`, {
    headers: { 'Content-Type': 'application/octet-stream' }, data: fs.readFileSync(process.env.QD_NAN) })).json();
  const r3 = await page.request.post(`${URL}/v1/jobs`, { data: {
    model: nanBlob.id, calibration: done.spec.calibration, method: 'rtn',
    budget: { samples: 2, seq_len: 16, epochs: 0 }, labels: { suite: 'e2e-fail' } } });
  const failId = (await r3.json()).id;
  let failJob = null;
  for (let i = 0; i < 300 && !(failJob && failJob.state === 'failed'); i++) {
    await page.waitForTimeout(200);
    failJob = await (await page.request.get(`${URL}/v1/jobs/${failId}`)).json();
  }
  check('failing_job_failed', failJob && failJob.state === 'failed' && !!failJob.error, JSON.stringify(failJob && failJob.state));

  // ---- back to the table: the job is listed with its headline figures, filters apply ----
  await page.goto(URL + '/#/');
  const row = page.locator(`#jobs-table tr[data-job="${jobId}"]`);
  await row.waitFor();
  const rowText = await row.textContent();
  check('jobs_table_row', /succeeded/.test(rowText) && /mobilequant/.test(rowText) &&
        /stories260K\.gguf/.test(rowText), rowText);
  const cell = async (id, col) => (await page.textContent(`#jobs-table tr[data-job="${id}"] td[data-col="${col}"]`)).trim();
  const lossCell = await cell(jobId, 'loss');
  const lossV = parseFloat(lossCell);
  check('list_loss_of_finished_job', /^\d/.test(lossCell) && Array.isArray(report.loss_curve) &&
        report.loss_curve.some(v => Math.abs(v - lossV) <= Math.max(5e-5, 0.01 * Math.abs(v))),
        `"${lossCell}" vs the curve ending ${report.loss_curve && report.loss_curve.slice(-3)}`);
  const dCell = await cell(jobId, 'dppl');
  const wantD = report.eval.int.ppl / report.eval.fp32.ppl - 1;
  check('list_int_ppl_increase', /^[+-]\d+\.\d\d%$/.test(dCell) && Math.abs(parseFloat(dCell) - 100 * wantD) < 0.006,
        `"${dCell}" vs ${(100 * wantD).toFixed(3)}%`);
  const gCell = await cell(jobId, 'gate');
  check('list_gate_verdict', gCell === (report.gates && report.gates.passed ? 'pass' : 'FAIL'), `"${gCell}" vs ${JSON.stringify(report.gates)}`);
  const failRow = page.locator(`#jobs-table tr[data-job="${failId}"]`);
  await failRow.waitFor();
  const reason = await cell(failId, 'reason');
  check('list_failure_reason', reason.length > 5 && failJob.error.startsWith(reason.replace(/…$/, '')), `"${reason}" vs "${failJob.error}"`);
  check('list_cancel_reason', (await cell(longId, 'reason')).length > 0);
  check('list_no_gate_before_result', (await cell(longId, 'gate')) !== 'pass');

  // ---- 420 px: nothing sticks out sideways, the headline columns stay in view ----
  await page.setViewportSize({ width: 420, height: 860 });
  await page.waitForTimeout(300);
  const over = await overflow();
  const gateRight = await page.evaluate(id => document.querySelector(`#jobs-table tr[data-job="${id}"] td[data-col="gate"]`).getBoundingClientRect().right, jobId);
  check('narrow_list_fits', over <= 0 && gateRight <= 420, `page ${over}px too wide, gate cell ends at ${gateRight}`);
  await page.goto(`${URL}/#/jobs/${jobId}`);
  await page.waitForSelector('#report-eval tbody tr[data-variant="fp32"]');
  const overJob = await overflow();
  check('narrow_job_page_fits', overJob <= 0, `page ${overJob}px too wide`);
  await page.screenshot({ path: SHOT.replace(/\.png$/, '-420.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(URL + '/#/');
  await row.waitFor();

  // ---- the favicon: named by the page, served, never a 404 ----
  const icon = await page.request.get(`${URL}/favicon.ico`);
  check('favicon_served', icon.status() === 200 && /image\/svg\+xml/.test(icon.headers()['content-type'] || '') &&
        /<svg/.test(await icon.text()), `HTTP ${icon.status()} ${icon.headers()['content-type']}`);
  check('favicon_linked', (await page.getAttribute('link[rel="icon"]', 'href')) === '/favicon.ico');
  check('no_favicon_404', favicon404.length === 0, favicon404.join(' '));
  await page.selectOption('#flt-state', 'failed');
  await row.waitFor({ state: 'detached' });
  const shownStates = await page.$$eval('#jobs-table tbody tr', trs => trs.map(tr => tr.dataset.state));
  check('state_filter', shownStates.length === 1 && shownStates[0] === 'failed', JSON.stringify(shownStates));
  await page.selectOption('#flt-state', '');
  await page.fill('#flt-label', 'suite=other');
  await row.waitFor({ state: 'detached' });
  await page.fill('#flt-label', 'suite=e2e');
  await row.waitFor();
  check('label_filter', true);

  check('no_network_outside_quantd', foreign.length === 0, foreign.join(' '));
  check('no_page_errors', consoleErrors.length === 0, consoleErrors.join(' | '));

  // ---- auth on: the token prompt, then the table loads with the token ----
  if (process.env.QD_AUTH_URL) {
    const p2 = await ctx.newPage();
    await p2.goto(process.env.QD_AUTH_URL + '/');
    await p2.waitForSelector('#token-box.shown');
    check('token_prompt_on_401', /needs a token/.test(await p2.textContent('#token-msg')),
          await p2.textContent('#token-msg'));
    await p2.fill('#token-input', process.env.QD_AUTH_TOKEN);
    await p2.click('#token-save');
    await p2.waitForFunction(() => /shown of/.test(document.querySelector('#jobs-count').textContent));
    check('token_used_as_bearer', /0 shown of 0/.test(await p2.textContent('#jobs-count')),
          await p2.textContent('#jobs-count'));
    const stored = await p2.evaluate(() => localStorage.getItem('quantd.token'));
    check('token_in_localstorage', stored === process.env.QD_AUTH_TOKEN);
    await p2.close();
  }
} catch (e) {
  check('dashboard_flow', false, (e && e.message || String(e)).split('\n')[0]);
  try { await page.screenshot({ path: SHOT.replace(/\.png$/, '-failure.png'), fullPage: true }); } catch (_) { /* */ }
} finally {
  await ctx.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
