// The dashboard in a real browser: headless Debian chromium driven by playwright-core against
// a running quantd (started by tests/e2e_dashboard.sh). Uploads the fixtures through the form,
// checks that the API's 422 lands next to its field, submits a small job, follows it to the
// end on the job page, reads the report tables and plots, saves a screenshot, and checks the
// token prompt of a server with auth on. Prints "PASS name" / "FAIL name: why" per check.
//
// env: QD_URL (server without auth), QD_AUTH_URL + QD_AUTH_TOKEN (server with a token file;
// optional), QD_MODEL, QD_CALIB (fixture files), QD_SHOT (screenshot path), CHROMIUM.
import { chromium } from 'playwright-core';
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
  check('report_sizes', /B$/.test((byV.mobilequant || [])[5] || '') &&
        /compression/.test(await page.textContent('#report-size')), JSON.stringify(byV.mobilequant));
  check('report_gate_verdict', /gate (passed|FAILED)/.test(await page.textContent('#gate-verdict')));
  const nLoss = await page.evaluate(() => {
    const l = document.querySelector('#loss-line');
    return l ? l.getAttribute('points').trim().split(/\s+/).length : 0;
  });
  check('loss_curve_plotted', nLoss >= 2, `${nLoss} points`);
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

  // ---- a long job: live progress while it runs, then Cancel ----
  const done = await (await page.request.get(`${URL}/v1/jobs/${jobId}`)).json();
  const r2 = await page.request.post(`${URL}/v1/jobs`, { data: {
    model: done.spec.model, calibration: done.spec.calibration,
    budget: { samples: 64, seq_len: 64, epochs: 1000 }, labels: { suite: 'e2e-cancel' } } });
  check('long_job_submitted', r2.status() === 201, `HTTP ${r2.status()}`);
  const longId = (await r2.json()).id;
  await page.goto(`${URL}/#/jobs/${longId}`);
  await page.waitForFunction(() => document.querySelector('#p-phase').textContent === 'optimize' &&
    /^\d+\/\d+$/.test(document.querySelector('#p-step').textContent) &&
    document.querySelector('#p-loss').textContent !== '-', null, { timeout: 60000 });
  check('live_progress_from_sse', true);
  await page.waitForFunction(() => {
    const l = document.querySelector('#loss-line');
    return l && l.getAttribute('points').trim().split(/\s+/).length >= 2;
  }, null, { timeout: 30000 });
  check('live_loss_curve', true);
  check('eta_shown', (await page.textContent('#p-eta')) !== '-', await page.textContent('#p-eta'));
  await page.click('#cancel-btn');
  await page.waitForFunction(() => document.querySelector('#job-state').textContent === 'cancelled',
                             null, { timeout: 60000 });
  check('cancel_button', await page.isHidden('#cancel-btn'));

  // ---- back to the table: the job is listed, filters apply ----
  await page.goto(URL + '/#/');
  const row = page.locator(`#jobs-table tr[data-job="${jobId}"]`);
  await row.waitFor();
  const rowText = await row.textContent();
  check('jobs_table_row', /succeeded/.test(rowText) && /mobilequant/.test(rowText) &&
        /stories260K\.gguf/.test(rowText), rowText);
  await page.selectOption('#flt-state', 'failed');
  await row.waitFor({ state: 'detached' });
  check('state_filter', (await page.locator('#jobs-table tbody tr').count()) === 0);
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
